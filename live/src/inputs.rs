//! What the live jobs read: the order database's change topics, its
//! watermarks and the clickstream, decoded one way for every job.

use tributary_model::clickstream::{ClickEvent, clickstream_topic};
use tributary_model::domain::topic_name;
use tributary_model::event::ChangeEvent;
use tributary_model::watermark::watermark_topic;
use tributary_stream::source::{Record, TopicKind};

use crate::{Error, Result};

const DB: &str = "orders";

/// A record of a job's inputs.
pub enum Message {
    Change(Box<ChangeEvent>),
    Click(ClickEvent),
}

/// The change topics of `tables` of the order database, its watermarks and
/// the clickstream.
pub fn order_inputs(prefix: &str, tables: &[&str]) -> Vec<(String, TopicKind)> {
    tables
        .iter()
        .map(|t| (topic_name(prefix, DB, t), TopicKind::Cdc { db: DB.into() }))
        .chain([
            (
                watermark_topic(prefix, DB),
                TopicKind::Watermarks { db: DB.into() },
            ),
            (clickstream_topic(prefix), TopicKind::Events),
        ])
        .collect()
}

/// Every shard of the order database, whose watermarks time waits for.
pub fn order_shards(shards: u32) -> Vec<(String, u32)> {
    (0..shards).map(|s| (DB.to_string(), s)).collect()
}

/// Decodes a record of [`order_inputs`]; `None` for one without a payload.
pub fn decode(record: &Record) -> Result<Option<Message>> {
    let Some(payload) = &record.payload else {
        return Ok(None);
    };
    if record.topic.ends_with(".events.clickstream") {
        return ClickEvent::from_json(payload)
            .map(|e| Some(Message::Click(e)))
            .map_err(|e| Error::Input(format!("clickstream message: {e}")));
    }
    ChangeEvent::from_json(payload)
        .map(|e| Some(Message::Change(Box::new(e))))
        .map_err(|e| Error::Input(format!("change event: {e}")))
}
