//! Request ids and W3C trace context at the edge of the order API.
//!
//! Every request gets a request id (the client's `X-Request-Id` when it is
//! a sane token, else a new UUID) and a trace context: the client's
//! `traceparent` (W3C Trace Context, version 00) when it parses, with a new
//! span id for this service, else a new trace. Both are fields of a
//! `request` span around the handler, so every log line of the request
//! carries them (`--log-json` writes them as JSON fields), and both go back
//! in the response headers (`x-request-id`, and `traceparent` naming this
//! service's span), so a client or a gateway can follow the request into
//! the logs. Handlers read the [`TraceContext`] from the request's
//! extensions.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use tracing::Instrument;

/// A W3C trace context: 16-byte trace id, 8-byte parent (span) id, flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn hex(bytes: &[u8]) -> String {
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

    /// The same trace, with this service's own span.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
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

/// The client's request id when it is a sane token (1–128 visible ASCII
/// characters), else a new one.
pub fn request_id(given: Option<&str>) -> String {
    match given {
        Some(s) if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            s.to_string()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// The middleware (see the module documentation).
pub(crate) async fn context(mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let id = request_id(headers.get("x-request-id").and_then(|v| v.to_str().ok()));
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .map_or_else(TraceContext::new_trace, |t| t.child());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        trace_id = %trace.trace_id_hex(),
        method = %req.method(),
        route = %route,
    );
    req.extensions_mut().insert(trace);
    let mut response = next.run(req).instrument(span).await;
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&trace.header()) {
        h.insert("traceparent", v);
    }
    response
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
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
        for bad in [None, Some(""), Some("has space"), Some(&*"x".repeat(129))] {
            let id = request_id(bad);
            assert_ne!(Some(id.as_str()), bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }
}
