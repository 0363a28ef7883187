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
//! the logs. Handlers read the [`RequestTrace`] from the request's
//! extensions; the order handlers write it into the order's transaction
//! ([`emit`]), so it follows the order's changes through the
//! change reader into the lake (see `tributary_metrics::trace`). With an
//! OTLP collector configured the request is a server span.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
pub(crate) use tributary_metrics::otlp::now_us;
use tributary_metrics::otlp::{self, Kind, Span};
pub use tributary_metrics::trace::TraceContext;
use tributary_metrics::trace::{Origin, WAL_PREFIX};

/// The SQL expression that writes a transaction's trace (a text parameter
/// `$n` holding [`RequestTrace::for_transaction`]'s content) into the WAL
/// as a transactional logical-decoding message under
/// `tributary_metrics::trace::WAL_PREFIX`. The order handlers put it in the
/// first statement of the order's transaction rather than a statement of
/// its own: the message then costs no round trip (measured with pgbench on
/// this machine, a statement of its own cost a quarter of a small order
/// transaction's throughput, exactly as much as a `SELECT 1` did), and the
/// reader sees it before the transaction's rows.
pub(crate) fn emit(param: usize) -> String {
    format!("pg_logical_emit_message(true, '{WAL_PREFIX}', ${param}::text)")
}

/// The service name of the order API's spans.
pub const SERVICE: &str = "tributary-oltp";

/// One request's trace: its span, its id and when it arrived.
#[derive(Clone, Debug)]
pub struct RequestTrace {
    pub context: TraceContext,
    pub request_id: String,
    pub received_us: i64,
}

impl RequestTrace {
    /// The trace for the caller's transaction: a span of its own for the
    /// transaction, and the content of the logical-decoding message that
    /// carries it (see [`EMIT`]).
    pub(crate) fn for_transaction(&self) -> (TraceContext, String) {
        let span = self.context.child();
        let origin = Origin {
            context: span,
            request_id: self.request_id.clone(),
            requested_us: self.received_us,
        };
        (span, origin.encode())
    }

    /// Records the transaction's span (from `start_us` to now).
    pub(crate) fn transaction_span(
        &self,
        span: TraceContext,
        start_us: i64,
        what: &str,
        order_id: i64,
        shard: usize,
    ) {
        if otlp::enabled() {
            otlp::record(
                Span::new(
                    SERVICE,
                    format!("{what} transaction"),
                    Kind::Client,
                    span,
                    Some(&self.context),
                    start_us,
                    now_us(),
                )
                .attr("db.system", "postgresql")
                .attr("tributary.order_id", order_id)
                .attr("tributary.shard", shard as i64)
                .attr("tributary.request_id", self.request_id.clone()),
            );
        }
    }
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
    let received_us = now_us();
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let trace = parent.map_or_else(TraceContext::new_trace, |t| t.child());
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
    let method = req.method().to_string();
    req.extensions_mut().insert(RequestTrace {
        context: trace,
        request_id: id.clone(),
        received_us,
    });
    let mut response = next.run(req).instrument(span).await;
    if otlp::enabled() {
        let status = response.status();
        let mut span = Span::new(
            SERVICE,
            format!("{method} {route}"),
            Kind::Server,
            trace,
            parent.as_ref(),
            received_us,
            now_us(),
        )
        .attr("http.request.method", method)
        .attr("http.route", route)
        .attr("http.response.status_code", i64::from(status.as_u16()))
        .attr("tributary.request_id", id.clone());
        if status.is_server_error() {
            span.error = Some(status.to_string());
        }
        otlp::record(span);
    }
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
    fn request_ids_are_kept_when_sane() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
        for bad in [None, Some(""), Some("has space"), Some(&*"x".repeat(129))] {
            let id = request_id(bad);
            assert_ne!(Some(id.as_str()), bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }
}
