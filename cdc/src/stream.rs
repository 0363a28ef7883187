//! The pgoutput → change-event state machine: decoded messages in, events
//! to the sink and schema changes to the caller out. No database here, so
//! it runs in unit tests with hand-built messages.
//!
//! Per transaction (`Begin` … `Commit`) every row change becomes one event
//! at the transaction's commit LSN with ordinals 1, 2, … in stream order, so
//! `event_id` (db, shard, LSN, ordinal) is the same on every replay. A
//! commit marks the sink ([`Sink::mark`]): once its events are durable, its
//! end LSN is what the slot may confirm, and the commit becomes the next
//! watermark. Unchanged TOASTed values (left out of an UPDATE) are absent
//! from `after` and listed in `unchanged_toast`, never NULL.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;
use tributary_metrics::otlp::{self, Kind, Span};
use tributary_metrics::trace::{
    HEADER_REQUEST_ID, HEADER_REQUESTED_US, HEADER_TRACEPARENT, Origin, TraceContext, WAL_PREFIX,
};
use tributary_model::domain::topic_name;
use tributary_model::event::{Column, Op};
use tributary_model::lsn::Lsn;
use tributary_model::pgtype::PgType;
use tributary_model::watermark::Watermark;

use crate::decode::{PgOutput, Relation, TupleValue};
use crate::encode::{self, Cell, Meta, TableEncoder};
use crate::metrics::TableCounters;
use crate::sink::Sink;
use crate::source::SourceDb;
use crate::{Error, Result};

/// A table whose shape differs from the last one recorded for it: the
/// caller records it (`tributary_cdc.schema_changes`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SchemaChange {
    pub table: String,
    /// Events from this position on carry the new columns.
    pub lsn: Lsn,
    /// The column list as JSON.
    pub columns: Value,
}

struct RelationInfo {
    topic: String,
    encoder: TableEncoder,
    counters: TableCounters,
}

struct TxState {
    lsn: Lsn,
    commit_ts_us: i64,
    xid: u32,
    ordinal: u64,
    /// The transaction's trace, when its writer left one (see
    /// `tributary_metrics::trace`).
    traced: Option<Traced>,
}

/// The service name of the change reader's spans.
const SERVICE: &str = "tributary-cdc";

/// A traced transaction: where it came from, the reader's span for it and
/// the headers its events carry.
struct Traced {
    origin: Origin,
    span: TraceContext,
    /// `traceparent` (the reader's span), request id, request time.
    headers: [String; 3],
    events: i64,
    tables: Vec<String>,
}

impl Traced {
    fn new(origin: Origin) -> Traced {
        let span = origin.context.child();
        let headers = [
            span.header(),
            origin.request_id.clone(),
            origin.requested_us.to_string(),
        ];
        Traced {
            origin,
            span,
            headers,
            events: 0,
            tables: Vec::new(),
        }
    }
}

/// Turns decoded pgoutput into events, one streaming session long.
pub(crate) struct StreamState<'a> {
    source: &'a SourceDb,
    topic_prefix: &'a str,
    relations: HashMap<u32, RelationInfo>,
    /// The last recorded shape of each table (column list as JSON).
    shapes: HashMap<String, Value>,
    tx: Option<TxState>,
    last_commit_end: Lsn,
    /// Everything before this position has been handed to the sink.
    marked: Lsn,
    /// Commits handed to the sink and not yet durable: (end, time).
    pending_commits: VecDeque<(Lsn, i64)>,
    /// The newest durable commit: (end, time).
    durable_commit: Option<(Lsn, i64)>,
    watermark_sent: Option<Lsn>,
    buffers: Buffers,
    /// Traced commits not yet durable: (end, commit time, trace). Their
    /// spans end when the commit is durable in Kafka.
    pending_traces: VecDeque<(Lsn, i64, Traced)>,
}

impl<'a> StreamState<'a> {
    /// `recorded`: the last shape recorded for each table, so a shape seen
    /// again after a restart is not a change.
    pub(crate) fn new(
        source: &'a SourceDb,
        topic_prefix: &'a str,
        recorded: HashMap<String, Value>,
    ) -> Self {
        StreamState {
            source,
            topic_prefix,
            relations: HashMap::new(),
            shapes: recorded,
            tx: None,
            last_commit_end: Lsn::ZERO,
            marked: Lsn::ZERO,
            pending_commits: VecDeque::new(),
            durable_commit: None,
            watermark_sent: None,
            buffers: Buffers::default(),
            pending_traces: VecDeque::new(),
        }
    }

    /// The end of the last commit handed to the sink.
    pub(crate) fn last_commit_end(&self) -> Lsn {
        self.last_commit_end
    }

    /// A keepalive: between transactions, everything before `wal_end` is
    /// handed to the sink (nothing of ours lies there), so an idle slot
    /// moves.
    pub(crate) fn keepalive<S: Sink>(&mut self, wal_end: Lsn, sink: &S) -> Result<()> {
        if self.tx.is_none() {
            sink.mark(wal_end)?;
            self.marked = self.marked.max(wal_end);
        }
        Ok(())
    }

    /// Moves commits that became durable out of the pending list.
    pub(crate) fn settle(&mut self, durable: Lsn) {
        while let Some(&(end, ts)) = self.pending_commits.front() {
            if end > durable {
                break;
            }
            self.durable_commit = Some((end, ts));
            self.pending_commits.pop_front();
        }
        while let Some((end, _, _)) = self.pending_traces.front() {
            if *end > durable {
                break;
            }
            let (end, commit_ts_us, t) = self.pending_traces.pop_front().expect("a front");
            otlp::record(
                Span::new(
                    SERVICE,
                    format!("publish {}", t.tables.join(",")),
                    Kind::Producer,
                    t.span,
                    Some(&t.origin.context),
                    commit_ts_us,
                    now_us(),
                )
                .attr("messaging.system", "kafka")
                .attr("db.namespace", self.source.db.clone())
                .attr("tributary.shard", i64::from(self.source.shard))
                .attr("tributary.commit_lsn", end.to_string())
                .attr("tributary.events", t.events)
                .attr("tributary.request_id", t.origin.request_id),
            );
        }
    }

    /// How old the oldest commit not yet durable is.
    pub(crate) fn lag_seconds(&self) -> f64 {
        self.pending_commits
            .front()
            .map_or(0.0, |(_, ts)| ((now_us() - ts) as f64 / 1e6).max(0.0))
    }

    /// A watermark when the durable commit moved since the last.
    pub(crate) fn take_watermark(&mut self) -> Option<Watermark> {
        let (end, ts) = self.durable_commit?;
        if self.watermark_sent.is_some_and(|w| w >= end) {
            return None;
        }
        self.watermark_sent = Some(end);
        Some(Watermark::new(
            &self.source.db,
            self.source.shard,
            end,
            ts,
            now_us(),
        ))
    }

    /// The position for a resnapshot's rows: after everything handed to the
    /// sink, before any change still to come. None inside a transaction or
    /// before the stream reported a position.
    pub(crate) fn resnapshot_lsn(&self) -> Option<Lsn> {
        (self.tx.is_none() && self.marked > Lsn::ZERO).then(|| Lsn(self.marked.0 - 1))
    }

    /// Handles one message: events go to `sink`; a table shape that
    /// differs from the last recorded one is returned, for the caller to
    /// record before the next message.
    pub(crate) async fn handle<S: Sink>(
        &mut self,
        msg: PgOutput,
        sink: &S,
    ) -> Result<Option<SchemaChange>> {
        match msg {
            PgOutput::Begin {
                final_lsn,
                commit_ts_us,
                xid,
            } => {
                self.tx = Some(TxState {
                    lsn: final_lsn,
                    commit_ts_us,
                    xid,
                    ordinal: 0,
                    traced: None,
                });
            }
            PgOutput::Commit {
                end_lsn,
                commit_ts_us,
                ..
            } => {
                if let Some(t) = self.tx.take().and_then(|t| t.traced)
                    && otlp::enabled()
                {
                    self.pending_traces.push_back((end_lsn, commit_ts_us, t));
                }
                self.last_commit_end = end_lsn;
                self.marked = self.marked.max(end_lsn);
                self.pending_commits.push_back((end_lsn, commit_ts_us));
                sink.mark(end_lsn)?;
            }
            PgOutput::Relation(rel) => return Ok(self.add_relation(rel)),
            PgOutput::Insert { relation, new } => {
                self.emit(relation, Op::Create, None, Some(new), sink)
                    .await?;
            }
            PgOutput::Update { relation, old, new } => {
                if let Some(old_key) = old.as_ref().filter(|o| self.key_changed(relation, o, &new))
                {
                    // A primary-key change is a delete of the old row and an
                    // insert of the new one, as Debezium reports it.
                    self.emit(relation, Op::Delete, Some(old_key.clone()), None, sink)
                        .await?;
                    self.emit(relation, Op::Create, None, Some(new), sink)
                        .await?;
                } else {
                    self.emit(relation, Op::Update, old, Some(new), sink)
                        .await?;
                }
            }
            PgOutput::Delete { relation, old } => {
                self.emit(relation, Op::Delete, Some(old), None, sink)
                    .await?;
            }
            PgOutput::Truncate { relations } => {
                for relation in relations {
                    self.emit(relation, Op::Truncate, None, None, sink).await?;
                }
            }
            // A writer's trace: its transaction's events carry it.
            PgOutput::Message {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == WAL_PREFIX => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.traced = Origin::decode(&content).map(Traced::new);
                    if tx.traced.is_none() {
                        tracing::debug!(
                            xid = tx.xid,
                            "a trace message that does not parse; its transaction goes untraced"
                        );
                    }
                }
            }
            // Heartbeats (`tributary.heartbeat`) are transactions of their
            // own: their commit moves the slot and the watermark.
            PgOutput::Message { .. } | PgOutput::Other(_) => {}
        }
        Ok(None)
    }

    fn key_changed(&self, relation: u32, old: &[TupleValue], new: &[TupleValue]) -> bool {
        let Some(rel) = self.relations.get(&relation) else {
            return false;
        };
        rel.encoder.columns().iter().enumerate().any(|(i, c)| {
            c.key && old.get(i).is_some_and(|o| *o != TupleValue::Null) && old.get(i) != new.get(i)
        })
    }

    /// Takes a table's (new) shape. The columns' key flags are the row's
    /// key (for REPLICA IDENTITY FULL the caller set them to the primary
    /// key). A shape that differs from the last one recorded for the table
    /// is a schema change: logged, counted and returned.
    fn add_relation(&mut self, rel: Relation) -> Option<SchemaChange> {
        let columns: Vec<Column> = rel
            .columns
            .iter()
            .map(|c| {
                Column::new(
                    c.name.clone(),
                    PgType::from_oid(c.type_oid, c.type_modifier),
                    c.key,
                )
            })
            .collect();
        let shape = serde_json::to_value(&columns).expect("columns serialise to JSON");
        let previous = self.shapes.get(&rel.name);
        let change = (previous != Some(&shape)).then(|| {
            let lsn = self.tx.as_ref().map_or(self.marked, |t| t.lsn);
            if previous.is_some() {
                tracing::warn!(db = %self.source.db, shard = self.source.shard, table = %rel.name, lsn = %lsn, columns = %shape, "schema change: events carry the new columns from here on");
                crate::metrics::schema_change(&self.source.label(), &rel.name);
            }
            SchemaChange {
                table: rel.name.clone(),
                lsn,
                columns: shape.clone(),
            }
        });
        self.shapes.insert(rel.name.clone(), shape);
        let topic = topic_name(self.topic_prefix, &self.source.db, &rel.name);
        self.relations.insert(
            rel.id,
            RelationInfo {
                encoder: TableEncoder::new(&self.source.db, self.source.shard, &rel.name, columns),
                counters: TableCounters::new(&rel.name),
                topic,
            },
        );
        change
    }

    async fn emit<S: Sink>(
        &mut self,
        relation: u32,
        op: Op,
        old: Option<Vec<TupleValue>>,
        new: Option<Vec<TupleValue>>,
        sink: &S,
    ) -> Result<()> {
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| Error::Protocol("row change outside a transaction".into()))?;
        let rel = self
            .relations
            .get(&relation)
            .ok_or_else(|| Error::Protocol(format!("change for unknown relation {relation}")))?;
        tx.ordinal += 1;
        // With REPLICA IDENTITY FULL the old row carries the values the new
        // one left out as unchanged TOAST: take them, so the event is whole.
        let new = match (new, old.as_ref()) {
            (Some(mut n), Some(o)) if o.len() == n.len() => {
                for (v, before) in n.iter_mut().zip(o) {
                    if *v == TupleValue::UnchangedToast && matches!(before, TupleValue::Text(_)) {
                        *v = before.clone();
                    }
                }
                Some(n)
            }
            (n, _) => n,
        };
        let enc = &rel.encoder;
        let columns = enc.columns();
        let bufs = &mut self.buffers;
        let after: Option<Vec<Cell<'_>>> = new.as_deref().map(cells);
        let mut before: Option<Vec<Cell<'_>>> = old.as_deref().map(cells);
        // With REPLICA IDENTITY DEFAULT a delete carries only the key: keep
        // just the key columns so `before` never shows invented NULLs.
        if let Some(b) = before.as_mut()
            && (op == Op::Delete || op == Op::Update)
            && b.len() == columns.len()
        {
            let key_only = columns
                .iter()
                .zip(b.iter())
                .any(|(c, v)| !c.key && encode::reads_as_null(&c.pg_type, *v));
            if key_only {
                for (c, v) in columns.iter().zip(b.iter_mut()) {
                    if !c.key {
                        *v = Cell::Absent;
                    }
                }
            }
        }
        let unchanged: Vec<&str> = match &new {
            Some(n) => n
                .iter()
                .zip(columns)
                .filter(|(v, _)| **v == TupleValue::UnchangedToast)
                .map(|(_, c)| c.name.as_str())
                .collect(),
            None => Vec::new(),
        };
        if let Some(a) = &after {
            let key = (op != Op::Delete && op != Op::Truncate).then_some(&mut bufs.key);
            enc.row(a, &mut bufs.after, key)?;
        }
        if let Some(b) = &before {
            let key = (op == Op::Delete).then_some(&mut bufs.key);
            enc.row(b, &mut bufs.before, key)?;
        }
        let identified = if op == Op::Delete {
            before.is_some()
        } else {
            after.is_some()
        };
        if op == Op::Truncate {
            bufs.key.clear();
            serde_json::to_writer(
                &mut bufs.key,
                &serde_json::json!({ "shard": self.source.shard, "truncate": true }),
            )
            .expect("writing JSON into a Vec cannot fail");
        } else if !identified {
            return Err(Error::Value(tributary_model::Error::InvalidEvent(format!(
                "{} event has no row image",
                op.as_str()
            ))));
        }
        let meta = Meta {
            op,
            lsn: tx.lsn,
            ordinal: tx.ordinal,
            ts_us: tx.commit_ts_us,
            tx_id: Some(tx.xid),
            snapshot: false,
            ts_ms: now_us() / 1000,
        };
        enc.event(
            &meta,
            before.is_some().then_some(&bufs.before[..]),
            after.is_some().then_some(&bufs.after[..]),
            &unchanged,
            &mut bufs.payload,
        );
        rel.counters.event(op, bufs.payload.len());
        match tx.traced.as_mut() {
            None => sink.send(&rel.topic, &bufs.key, &bufs.payload, &[]).await,
            Some(t) => {
                t.events += 1;
                let table = enc.table();
                if !t.tables.iter().any(|x| x == table) {
                    t.tables.push(table.to_string());
                }
                let [parent, request, requested] = &t.headers;
                let headers = [
                    (HEADER_TRACEPARENT, parent.as_bytes()),
                    (HEADER_REQUEST_ID, request.as_bytes()),
                    (HEADER_REQUESTED_US, requested.as_bytes()),
                ];
                sink.send(&rel.topic, &bufs.key, &bufs.payload, &headers)
                    .await
            }
        }
    }
}

/// Reused buffers for the event being written.
#[derive(Default)]
struct Buffers {
    before: Vec<u8>,
    after: Vec<u8>,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// A pgoutput tuple as row-image cells (unchanged TOAST is absent).
fn cells(tuple: &[TupleValue]) -> Vec<Cell<'_>> {
    tuple
        .iter()
        .map(|v| match v {
            TupleValue::Null => Cell::Null,
            TupleValue::UnchangedToast => Cell::Absent,
            TupleValue::Text(t) => Cell::Text(t),
        })
        .collect()
}

pub(crate) use tributary_metrics::otlp::now_us;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{LazyLock, Mutex};

    use serde_json::json;
    use tributary_kafka::KafkaConfig;
    use tributary_model::event::{ChangeEvent, event_id};

    use super::*;
    use crate::decode::RelationColumn;
    use crate::sink::Barrier;

    /// A sink that keeps what it was given; the test decides what is
    /// durable, as a broker's acknowledgements would.
    /// (topic, key, payload) as sent.
    type Sent = (String, Vec<u8>, Vec<u8>);

    #[derive(Default)]
    struct Recording {
        sent: Mutex<Vec<Sent>>,
        /// Each event's headers, in the order sent.
        headers: Mutex<Vec<Vec<(String, String)>>>,
        marks: Mutex<Vec<Lsn>>,
        durable: AtomicU64,
    }

    impl Recording {
        fn take(&self) -> Vec<(String, Value, ChangeEvent)> {
            self.sent
                .lock()
                .unwrap()
                .drain(..)
                .map(|(topic, key, payload)| {
                    (
                        topic,
                        serde_json::from_slice(&key).unwrap(),
                        ChangeEvent::from_json(&payload).unwrap(),
                    )
                })
                .collect()
        }

        fn marks(&self) -> Vec<Lsn> {
            self.marks.lock().unwrap().clone()
        }
    }

    impl Sink for Recording {
        async fn prepare(_: &KafkaConfig, _: &[String]) -> Result<()> {
            Ok(())
        }
        fn open(_: &KafkaConfig) -> Result<Self> {
            Ok(Recording::default())
        }
        async fn send(
            &self,
            topic: &str,
            key: &[u8],
            payload: &[u8],
            headers: &[(&str, &[u8])],
        ) -> Result<()> {
            self.sent
                .lock()
                .unwrap()
                .push((topic.to_string(), key.to_vec(), payload.to_vec()));
            self.headers.lock().unwrap().push(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
            );
            Ok(())
        }
        fn mark(&self, lsn: Lsn) -> Result<()> {
            self.marks.lock().unwrap().push(lsn);
            Ok(())
        }
        fn barrier(&self) -> Result<Barrier> {
            Ok(Barrier::ready())
        }
        fn durable(&self) -> Lsn {
            Lsn(self.durable.load(Ordering::SeqCst))
        }
        fn check(&self) -> Result<()> {
            Ok(())
        }
    }

    const ITEMS: u32 = 16_390;
    const COMMIT_TS: i64 = 1_780_000_000_000_000;

    static SOURCE: LazyLock<SourceDb> = LazyLock::new(|| SourceDb {
        db: "orders".into(),
        shard: 2,
        dsn: String::new(),
        tables: vec!["items".into()],
    });

    /// A stream of [`SOURCE`] that has recorded no table yet, and its sink.
    fn stream() -> (StreamState<'static>, Recording) {
        let state = StreamState::new(&SOURCE, "trib", HashMap::new());
        (state, Recording::default())
    }

    fn column(name: &str, type_oid: u32, key: bool) -> RelationColumn {
        RelationColumn {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            key,
        }
    }

    /// `items(id bigint primary key, name text, note text)`, plus `extra`.
    fn items(extra: bool) -> PgOutput {
        let mut columns = vec![
            column("id", 20, true),
            column("name", 25, false),
            column("note", 25, false),
        ];
        if extra {
            columns.push(column("extra", 23, false));
        }
        PgOutput::Relation(Relation {
            id: ITEMS,
            namespace: "public".into(),
            name: "items".into(),
            replica_identity: b'd',
            columns,
        })
    }

    fn begin(lsn: u64, xid: u32) -> PgOutput {
        PgOutput::Begin {
            final_lsn: Lsn(lsn),
            commit_ts_us: COMMIT_TS,
            xid,
        }
    }

    fn commit(lsn: u64, end: u64) -> PgOutput {
        PgOutput::Commit {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(end),
            commit_ts_us: COMMIT_TS,
        }
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(s.into())
    }

    /// `changes` as transaction `xid` committed at `lsn`, ending at `end`.
    fn transaction(lsn: u64, xid: u32, end: u64, changes: Vec<PgOutput>) -> Vec<PgOutput> {
        let mut msgs = vec![begin(lsn, xid)];
        msgs.extend(changes);
        msgs.push(commit(lsn, end));
        msgs
    }

    async fn feed(
        state: &mut StreamState<'_>,
        sink: &Recording,
        msgs: Vec<PgOutput>,
    ) -> Vec<SchemaChange> {
        let mut changes = Vec::new();
        for m in msgs {
            changes.extend(state.handle(m, sink).await.unwrap());
        }
        changes
    }

    fn message(transactional: bool, prefix: &str, content: &str) -> PgOutput {
        PgOutput::Message {
            transactional,
            lsn: Lsn(0),
            prefix: prefix.into(),
            content: content.as_bytes().to_vec().into(),
        }
    }

    #[tokio::test]
    async fn a_writers_trace_rides_on_its_transactions_events_only() {
        let (mut state, sink) = stream();
        feed(&mut state, &sink, vec![items(false)]).await;
        let origin = Origin {
            context: TraceContext::new_trace(),
            request_id: "req-7".into(),
            requested_us: COMMIT_TS - 5_000,
        };
        let insert = |id: &str| PgOutput::Insert {
            relation: ITEMS,
            new: vec![t(id), t("x"), t("y")],
        };
        // Traced; then untraced; then a message that is not a trace, one
        // that does not parse and a non-transactional one: no headers.
        let mut msgs = transaction(
            0x100,
            7,
            0x108,
            vec![
                message(true, WAL_PREFIX, &origin.encode()),
                insert("1"),
                insert("2"),
            ],
        );
        msgs.extend(transaction(0x200, 8, 0x208, vec![insert("3")]));
        msgs.extend(transaction(
            0x300,
            9,
            0x308,
            vec![
                message(true, "someone.else", &origin.encode()),
                message(true, WAL_PREFIX, "{not json"),
                message(false, WAL_PREFIX, &origin.encode()),
                insert("4"),
            ],
        ));
        feed(&mut state, &sink, msgs).await;
        let headers = sink.headers.lock().unwrap().clone();
        assert_eq!(headers.len(), 4);
        assert_eq!(headers[0], headers[1], "one span for the transaction");
        let h: HashMap<&str, &str> = headers[0]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let parent = TraceContext::parse(h[HEADER_TRACEPARENT]).unwrap();
        assert_eq!(parent.trace_id, origin.context.trace_id);
        assert_ne!(
            parent.span_id, origin.context.span_id,
            "the reader's own span is the events' parent"
        );
        assert_eq!(h[HEADER_REQUEST_ID], "req-7");
        assert_eq!(h[HEADER_REQUESTED_US], (COMMIT_TS - 5_000).to_string());
        assert!(
            headers[2].is_empty() && headers[3].is_empty(),
            "{headers:?}"
        );
    }

    #[tokio::test]
    async fn a_transaction_becomes_events_with_ordinals_ids_and_images() {
        let (mut state, sink) = stream();
        let changes = vec![
            PgOutput::Insert {
                relation: ITEMS,
                new: vec![t("1"), t("one"), t("long note")],
            },
            // The unchanged TOASTed note is not sent.
            PgOutput::Update {
                relation: ITEMS,
                old: None,
                new: vec![t("1"), t("uno"), TupleValue::UnchangedToast],
            },
            // REPLICA IDENTITY DEFAULT: a delete carries the key only.
            PgOutput::Delete {
                relation: ITEMS,
                old: vec![t("1"), TupleValue::Null, TupleValue::Null],
            },
        ];
        feed(&mut state, &sink, vec![items(false)]).await;
        let tx = transaction(0x100, 7, 0x108, changes);
        feed(&mut state, &sink, tx).await;
        let events = sink.take();
        assert_eq!(events.len(), 3);
        for (n, (topic, key, ev)) in events.iter().enumerate() {
            let ordinal = n as u64 + 1;
            assert_eq!(topic, "trib.orders.items");
            assert_eq!(key, &json!({ "shard": 2, "id": 1 }));
            assert_eq!(ev.source.lsn, Lsn(0x100));
            assert_eq!(ev.source.ordinal, ordinal);
            assert_eq!(ev.source.tx_id, Some(7));
            assert_eq!(ev.source.ts_us, COMMIT_TS);
            assert!(!ev.source.snapshot);
            assert_eq!(
                ev.event_id,
                event_id("orders", 2, Lsn(0x100), ordinal, false)
            );
        }
        let (c, u, d) = (&events[0].2, &events[1].2, &events[2].2);
        assert_eq!((c.op, u.op, d.op), (Op::Create, Op::Update, Op::Delete));
        assert_eq!(c.before, None);
        assert_eq!(
            Value::Object(c.after.clone().unwrap()),
            json!({ "id": 1, "name": "one", "note": "long note" })
        );
        // Absent means unchanged, never NULL.
        assert_eq!(
            Value::Object(u.after.clone().unwrap()),
            json!({ "id": 1, "name": "uno" })
        );
        assert_eq!(u.unchanged_toast, ["note"]);
        assert!(c.unchanged_toast.is_empty());
        assert_eq!(Value::Object(d.before.clone().unwrap()), json!({ "id": 1 }));
        assert_eq!(d.after, None);
        // The commit marks the sink with its end.
        assert_eq!(sink.marks(), [Lsn(0x108)]);
        assert_eq!(state.last_commit_end(), Lsn(0x108));
    }

    #[tokio::test]
    async fn a_key_change_is_a_delete_of_the_old_key_and_a_create() {
        let (mut state, sink) = stream();
        let key_change = PgOutput::Update {
            relation: ITEMS,
            old: Some(vec![t("2"), TupleValue::Null, TupleValue::Null]),
            new: vec![t("3"), t("two"), TupleValue::Null],
        };
        feed(&mut state, &sink, vec![items(false)]).await;
        let tx = transaction(0x200, 8, 0x210, vec![key_change]);
        feed(&mut state, &sink, tx).await;
        let events = sink.take();
        let ops: Vec<(Op, u64, Value)> = events
            .iter()
            .map(|(_, key, ev)| (ev.op, ev.source.ordinal, key.clone()))
            .collect();
        assert_eq!(
            ops,
            [
                (Op::Delete, 1, json!({ "shard": 2, "id": 2 })),
                (Op::Create, 2, json!({ "shard": 2, "id": 3 })),
            ]
        );
    }

    #[tokio::test]
    async fn replica_identity_full_fills_unchanged_toast_from_the_old_row() {
        let (mut state, sink) = stream();
        let PgOutput::Relation(mut rel) = items(false) else {
            unreachable!()
        };
        rel.replica_identity = b'f';
        let update = PgOutput::Update {
            relation: ITEMS,
            old: Some(vec![t("1"), t("one"), t("long note")]),
            new: vec![t("1"), t("uno"), TupleValue::UnchangedToast],
        };
        feed(&mut state, &sink, vec![PgOutput::Relation(rel)]).await;
        let tx = transaction(0x300, 9, 0x308, vec![update]);
        feed(&mut state, &sink, tx).await;
        let (_, _, ev) = sink.take().remove(0);
        assert_eq!(
            Value::Object(ev.after.unwrap()),
            json!({ "id": 1, "name": "uno", "note": "long note" })
        );
        assert!(ev.unchanged_toast.is_empty());
        assert_eq!(
            Value::Object(ev.before.unwrap()),
            json!({ "id": 1, "name": "one", "note": "long note" })
        );
    }

    #[tokio::test]
    async fn a_relation_with_an_added_column_is_returned_as_a_schema_change() {
        // What an earlier session recorded: the table as it was.
        let (mut first, sink) = stream();
        let seen = feed(&mut first, &sink, vec![items(false)]).await;
        assert_eq!(seen.len(), 1, "a table's first shape is recorded");
        let recorded = HashMap::from([("items".to_string(), seen[0].columns.clone())]);

        let mut state = StreamState::new(&SOURCE, "trib", recorded);
        // The same shape again (a restart): no change.
        assert!(feed(&mut state, &sink, vec![items(false)]).await.is_empty());
        let insert = PgOutput::Insert {
            relation: ITEMS,
            new: vec![t("4"), t("four"), TupleValue::Null, t("7")],
        };
        let tx = transaction(0x400, 10, 0x410, vec![items(true), insert]);
        let changes = feed(&mut state, &sink, tx).await;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].table, "items");
        assert_eq!(changes[0].lsn, Lsn(0x400));
        let names: Vec<&str> = changes[0]
            .columns
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["id", "name", "note", "extra"]);
        // Events carry the new column from there on.
        let (_, _, ev) = sink.take().remove(0);
        assert_eq!(ev.after.unwrap()["extra"], json!(7));
        assert_eq!(ev.columns.len(), 4);
    }

    #[tokio::test]
    async fn a_truncate_is_one_event_per_table_keyed_by_shard() {
        let (mut state, sink) = stream();
        let truncate = PgOutput::Truncate {
            relations: vec![ITEMS],
        };
        feed(&mut state, &sink, vec![items(false)]).await;
        let tx = transaction(0x500, 11, 0x508, vec![truncate]);
        feed(&mut state, &sink, tx).await;
        let events = sink.take();
        assert_eq!(events.len(), 1);
        let (topic, key, ev) = &events[0];
        assert_eq!(topic, "trib.orders.items");
        assert_eq!(key, &json!({ "shard": 2, "truncate": true }));
        assert_eq!(ev.op, Op::Truncate);
        assert_eq!((&ev.before, &ev.after), (&None, &None));
        assert_eq!(ev.source.ordinal, 1);
    }

    #[tokio::test]
    async fn heartbeats_give_watermarks_only_once_durable() {
        let (mut state, sink) = stream();
        let heartbeat = PgOutput::Message {
            transactional: true,
            lsn: Lsn(0x600),
            prefix: "tributary.heartbeat".into(),
            content: bytes::Bytes::from_static(b"2026-01-01 00:00:00+00"),
        };
        let tx = transaction(0x600, 12, 0x608, vec![heartbeat]);
        feed(&mut state, &sink, tx).await;
        assert!(sink.take().is_empty(), "a heartbeat is no change event");
        assert_eq!(sink.marks(), [Lsn(0x608)]);
        // Not durable yet: no watermark, and the commit counts as lag.
        state.settle(Lsn(0x607));
        assert_eq!(state.take_watermark(), None);
        assert!(state.lag_seconds() > 0.0);
        state.settle(Lsn(0x608));
        let w = state.take_watermark().expect("a watermark once durable");
        assert_eq!(w.lsn().unwrap(), Lsn(0x608));
        assert_eq!(
            (w.db.as_str(), w.shard, w.commit_ts_us),
            ("orders", 2, COMMIT_TS)
        );
        assert_eq!(state.lag_seconds(), 0.0);
        // Once per durable commit.
        assert_eq!(state.take_watermark(), None);
    }

    #[tokio::test]
    async fn keepalives_move_an_idle_slot_only_between_transactions() {
        let (mut state, sink) = stream();
        assert_eq!(state.resnapshot_lsn(), None);
        state.keepalive(Lsn(0x700), &sink).unwrap();
        assert_eq!(state.resnapshot_lsn(), Some(Lsn(0x6ff)));
        feed(&mut state, &sink, vec![items(false), begin(0x800, 13)]).await;
        state.keepalive(Lsn(0x900), &sink).unwrap();
        assert_eq!(state.resnapshot_lsn(), None, "inside a transaction");
        assert_eq!(sink.marks(), [Lsn(0x700)]);
    }

    #[tokio::test]
    async fn changes_out_of_place_are_errors() {
        let (mut state, sink) = stream();
        let insert = || PgOutput::Insert {
            relation: ITEMS,
            new: vec![t("1"), t("a"), t("b")],
        };
        feed(&mut state, &sink, vec![items(false)]).await;
        let outside = state.handle(insert(), &sink).await.unwrap_err();
        assert!(
            outside.to_string().contains("outside a transaction"),
            "{outside}"
        );
        feed(&mut state, &sink, vec![begin(0xa00, 14)]).await;
        let unknown = state
            .handle(
                PgOutput::Insert {
                    relation: 99,
                    new: vec![],
                },
                &sink,
            )
            .await
            .unwrap_err();
        assert!(
            unknown.to_string().contains("unknown relation 99"),
            "{unknown}"
        );
        assert!(sink.take().is_empty());
    }
}
