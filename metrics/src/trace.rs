//! W3C trace context, and how it rides with one order from the HTTP request
//! to the lake.
//!
//! The order API starts (or continues) a trace per request. Inside the
//! order's transaction it writes one transactional logical-decoding message
//! (`pg_logical_emit_message(true, 'tributary.trace', …)`, [`WAL_PREFIX`])
//! holding an [`Origin`]: the transaction's span, the request id and when
//! the request arrived. The message sits in the WAL with the transaction's
//! rows, so the change reader sees it before their changes, and only if
//! the transaction commits. The reader puts the context on each of the
//! transaction's Kafka events as headers ([`HEADER_TRACEPARENT`] naming the
//! reader's own span, [`HEADER_REQUEST_ID`], [`HEADER_REQUESTED_US`]), and
//! the ingester keeps them in bronze. Every stage records its span with
//! [`crate::otlp`] when an OTLP collector is configured.

use rand::RngCore;
use serde_json::{Value, json};

/// The prefix of the logical-decoding message that carries an [`Origin`].
pub const WAL_PREFIX: &str = "tributary.trace";
/// Kafka header: the W3C `traceparent` of the span that produced the event.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Kafka header: the id of the HTTP request that made the change.
pub const HEADER_REQUEST_ID: &str = "x-request-id";
/// Kafka header: when that request arrived, microseconds since the epoch.
pub const HEADER_REQUESTED_US: &str = "tributary-requested-us";

/// A W3C trace context: 16-byte trace id, 8-byte parent (span) id, flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl TraceContext {
    /// Parses a `traceparent` header value (version 00; lower-case hex; an
    /// all-zero trace or parent id is invalid, as the specification says).
    pub fn parse(value: &str) -> Option<TraceContext> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id = unhex::<16>(trace)?;
        let span_id = unhex::<8>(parent)?;
        let flags = unhex::<1>(flags)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, sampled.
    pub fn new_trace() -> TraceContext {
        let mut trace_id = [0u8; 16];
        rand::rng().fill_bytes(&mut trace_id);
        trace_id[0] |= 1; // never all zero
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            flags: 1,
        }
    }

    /// The same trace, with a new span of its own.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Whether the trace is sampled (flag 01): only sampled spans are exported.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    id[0] |= 1;
    id
}

/// Where a transaction's changes came from: the WAL message's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The transaction's span (the parent of the change reader's span).
    pub context: TraceContext,
    pub request_id: String,
    /// When the request arrived, microseconds since the epoch.
    pub requested_us: i64,
}

impl Origin {
    /// The WAL message's content: a small JSON object.
    pub fn encode(&self) -> String {
        json!({
            "traceparent": self.context.header(),
            "request_id": self.request_id,
            "requested_us": self.requested_us,
        })
        .to_string()
    }

    /// Reads a WAL message's content; None when it is not one of ours (a
    /// message is data any session may write: never trusted to be sane).
    pub fn decode(content: &[u8]) -> Option<Origin> {
        let v: Value = serde_json::from_slice(content).ok()?;
        let request_id = v.get("request_id")?.as_str()?;
        if request_id.len() > 128 || !request_id.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        Some(Origin {
            context: TraceContext::parse(v.get("traceparent")?.as_str()?)?,
            request_id: request_id.to_string(),
            requested_us: v.get("requested_us")?.as_i64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_what_the_spec_refuses() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(v).unwrap();
        assert_eq!(t.header(), v);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
        assert!(t.sampled());
        let child = t.child();
        assert_eq!(child.trace_id, t.trace_id);
        assert_ne!(child.span_id, t.span_id);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        let new = TraceContext::new_trace();
        assert_eq!(TraceContext::parse(&new.header()), Some(new));
        let unsampled =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn origins_round_trip_and_foreign_messages_are_not_origins() {
        let o = Origin {
            context: TraceContext::new_trace(),
            request_id: "req-1".into(),
            requested_us: 1_733_000_000_000_000,
        };
        assert_eq!(Origin::decode(o.encode().as_bytes()), Some(o.clone()));
        for bad in [
            &b"not json"[..],
            br#"{"traceparent":"garbage","request_id":"r","requested_us":1}"#,
            br#"{"request_id":"r","requested_us":1}"#,
            br#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","request_id":"has space","requested_us":1}"#,
            br#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","request_id":"r","requested_us":"x"}"#,
        ] {
            assert_eq!(Origin::decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
