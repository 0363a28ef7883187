//! The proxy: pingora's request phases, filled in.
//!
//! 1. `request_filter`: the request id; the API key and the rate limit; the
//!    body, read whole and bounded (`413` above the limit, `400` when a JSON
//!    body does not parse), so nothing refused reaches a replica and a
//!    retry can send the body again; the customer (for consistent hashing)
//!    from `X-Customer-Id`, a `/customers/{id}` path or the body's
//!    `customer_id`; the storefront's composed endpoint is answered here.
//! 2. `upstream_peer`: a replica from the balancer, leaving out those this
//!    request tried; per-try timeouts within what is left of the total.
//! 3. Failures: a refused connection always retries elsewhere (nothing was
//!    sent); a failure after sending retries only a request that is safe to
//!    repeat. Each failure, and each 502/503/504 answer, counts towards the
//!    replica's passive ejection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use serde_json::{Value, json};

use crate::balance::{Balancer, Inflight, Routing, hash64};
use crate::bff;
use crate::config::GatewayConfig;
use crate::edge::{Edge, Refusal, presented_key};
use crate::metrics;

pub struct Proxy {
    pub(crate) routing: Arc<Routing>,
    pub(crate) edge: Edge,
    pub(crate) config: GatewayConfig,
    pub(crate) http: reqwest::Client,
}

pub struct Ctx {
    pub(crate) request_id: String,
    started: Instant,
    client: String,
    /// The customer's hash, for consistent hashing and sticky pools.
    pub(crate) key: Option<u64>,
    /// The balancer generation this request picks from (its retries index
    /// the same replica set).
    balancer: Option<Arc<Balancer>>,
    pub(crate) tried: Vec<usize>,
    current: Option<Inflight>,
    /// GET or HEAD, or an `Idempotency-Key`: a replica may see it twice.
    retry_safe: bool,
    /// Why the gateway answered itself (a refusal, or the storefront
    /// endpoint), for the metrics.
    answered: Option<&'static str>,
}

impl Proxy {
    fn tries_left(&self, ctx: &Ctx) -> bool {
        ctx.tried.len() <= self.config.retries as usize
            && ctx.started.elapsed() < Duration::from_millis(self.config.total_timeout_ms)
    }

    fn total_left(&self, ctx: &Ctx) -> Duration {
        Duration::from_millis(self.config.total_timeout_ms).saturating_sub(ctx.started.elapsed())
    }

    fn note_failure(&self, balancer: &Balancer, i: usize) {
        if balancer.failed(i) {
            let addr = balancer.backends[i].addr;
            tracing::warn!(backend = %addr, eject_ms = self.config.ejection.eject_ms,
                "replica ejected after consecutive failures");
            metrics::ejected(&addr.to_string());
        }
    }
}

/// Writes a JSON answer of the gateway's own (errors, the composed
/// endpoint), with the request id.
pub(crate) async fn respond(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    body: &Value,
    retry_after: Option<u64>,
) -> Result<()> {
    let body = Bytes::from(body.to_string());
    let mut h = ResponseHeader::build(status, Some(4))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let Some(s) = retry_after {
        h.insert_header("retry-after", s.to_string())?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

async fn refuse(
    session: &mut Session,
    ctx: &mut Ctx,
    reason: &'static str,
    r: Refusal,
) -> Result<bool> {
    ctx.answered = Some(reason);
    tracing::info!(request_id = %ctx.request_id, client = %ctx.client, status = r.status,
        reason, "refused at the gateway");
    // The body of a refused request is not read: do not reuse the
    // connection, its remaining bytes would be taken for a request.
    session.set_keepalive(None);
    respond(
        session,
        ctx,
        r.status,
        &json!({"error": r.message, "field": r.field}),
        r.retry_after,
    )
    .await?;
    Ok(true)
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The customer a request is about, when it says.
fn customer_of(req: &RequestHeader, body: Option<&Value>) -> Option<i64> {
    if let Some(c) = header(req, "x-customer-id").and_then(|v| v.trim().parse().ok()) {
        return Some(c);
    }
    let path = req.uri.path();
    if let Some(rest) = path.strip_prefix("/customers/") {
        let id = rest.split('/').next().unwrap_or_default();
        if let Ok(c) = id.parse() {
            return Some(c);
        }
    }
    body?.get("customer_id")?.as_i64()
}

fn too_large(limit: usize) -> Refusal {
    Refusal {
        status: 413,
        message: format!("request body larger than {limit} bytes"),
        field: "body",
        retry_after: None,
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: String::new(),
            started: Instant::now(),
            client: String::new(),
            key: None,
            balancer: None,
            tried: Vec::new(),
            current: None,
            retry_safe: false,
            answered: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = tributary_oltp::trace::request_id(header(req, "x-request-id"));
        let key = presented_key(header(req, "x-api-key"), header(req, "authorization"));
        let from = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let client = match self.edge.identify(key, from) {
            Ok(c) => c,
            Err(r) => return refuse(session, ctx, "unauthorized", r).await,
        };
        ctx.client = client.name.clone();
        if let Err(r) = self.edge.admit(&client) {
            return refuse(session, ctx, "rate_limited", r).await;
        }
        let req = session.req_header();
        let method = req.method.clone();
        ctx.retry_safe = method == pingora_http::Method::GET
            || method == pingora_http::Method::HEAD
            || req.headers.contains_key("idempotency-key");
        let limit = self.config.max_body_bytes;
        let declared: Option<usize> =
            header(req, "content-length").and_then(|v| v.trim().parse().ok());
        if declared.is_some_and(|n| n > limit) {
            return refuse(session, ctx, "too_large", too_large(limit)).await;
        }
        let json_body = header(req, "content-type").is_none_or(|t| t.contains("json"));
        // The whole body, into pingora's retry buffer (which then sends it
        // to the replica, and again on a retry).
        session.enable_retry_buffering();
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return refuse(session, ctx, "too_large", too_large(limit)).await;
            }
        }
        let parsed: Option<Value> = if body.is_empty() {
            None
        } else if json_body {
            match serde_json::from_slice(&body) {
                Ok(v) => Some(v),
                Err(e) => {
                    let r = Refusal {
                        status: 400,
                        message: format!(
                            "malformed JSON body: {e} (line {}, column {})",
                            e.line(),
                            e.column()
                        ),
                        field: "body",
                        retry_after: None,
                    };
                    return refuse(session, ctx, "malformed", r).await;
                }
            }
        } else {
            None
        };
        let req = session.req_header();
        ctx.key = customer_of(req, parsed.as_ref()).map(|c| hash64(&[&c.to_le_bytes()]));
        if method == pingora_http::Method::GET
            && let Some(id) = bff::order_path(req.uri.path())
        {
            ctx.answered = Some("storefront");
            let (status, body) = bff::order_page(self, ctx, id).await;
            respond(session, ctx, status, &body, None).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let left = self.total_left(ctx);
        if left.is_zero() {
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "the request's total timeout passed",
            ));
        }
        let balancer = ctx
            .balancer
            .get_or_insert_with(|| self.routing.get())
            .clone();
        let Some(i) = balancer.pick(ctx.key, &ctx.tried) else {
            ctx.answered = Some("no_replica");
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no healthy replica",
            ));
        };
        if !ctx.tried.is_empty() {
            metrics::retried();
        }
        ctx.tried.push(i);
        ctx.current = None;
        ctx.current = Some(balancer.start(i));
        let mut peer = HttpPeer::new(balancer.backends[i].addr, false, String::new());
        let per_try = Duration::from_millis(self.config.try_timeout_ms).min(left);
        peer.options.connection_timeout =
            Some(Duration::from_millis(self.config.connect_timeout_ms).min(left));
        peer.options.read_timeout = Some(per_try);
        peer.options.write_timeout = Some(per_try);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        // Keys stop at the edge: replicas and their logs never see them.
        upstream.remove_header("x-api-key");
        upstream.remove_header("authorization");
        upstream.insert_header("x-tributary-client", ctx.client.as_str())?;
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            upstream.insert_header("x-forwarded-for", ip.to_string())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(i), Some(b)) = (ctx.tried.last(), &ctx.balancer) {
            if matches!(response.status.as_u16(), 502..=504) {
                self.note_failure(b, *i);
            } else {
                b.succeeded(*i);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !response.headers.contains_key("x-request-id") {
            response.insert_header("x-request-id", ctx.request_id.as_str())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(i), Some(b)) = (ctx.tried.last(), &ctx.balancer) {
            self.note_failure(b, *i);
        }
        tracing::warn!(request_id = %ctx.request_id, backend = %peer, error = %e,
            "connecting to a replica failed");
        // Nothing reached the replica: any request may go elsewhere.
        e.set_retry(self.tries_left(ctx));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("replica {peer}"));
        if e.esource() == &ErrorSource::Upstream
            && let (Some(i), Some(b)) = (ctx.tried.last(), &ctx.balancer)
        {
            self.note_failure(b, *i);
        }
        let repeatable = ctx.retry_safe && !session.as_ref().retry_buffer_truncated();
        e.set_retry(repeatable && self.tries_left(ctx));
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let message = match code {
                503 => "no healthy replica, retry later".to_owned(),
                504 => "the replica did not answer in time".to_owned(),
                502 => "the replica failed to answer".to_owned(),
                400 => "bad request".to_owned(),
                _ => "gateway error".to_owned(),
            };
            tracing::warn!(request_id = %ctx.request_id, tries = ctx.tried.len(), error = %e,
                code, "request failed at the gateway");
            let retry_after = (code == 503).then_some(1);
            if let Err(error) = respond(
                session,
                ctx,
                code,
                &json!({"error": message, "field": ""}),
                retry_after,
            )
            .await
            {
                tracing::debug!(%error, "could not send the error answer");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        metrics::request(status, ctx.answered, ctx.started.elapsed());
        ctx.current = None;
    }
}
