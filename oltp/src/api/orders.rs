//! Orders: placement with idempotency keys, the status lifecycle, lookups.
//!
//! Placing an order also writes an `order_placed` row to the `outbox` table
//! in the same transaction (payload: the order as `GET /orders/{id}` shows
//! it, with its items, device and countries), so the business event exists
//! exactly when the order does; CDC carries it.
//!
//! Payments: the platform has no card processor, so the caller plays it.
//! `POST /orders/{id}/pay` takes `outcome`: `"captured"` (the default) pays
//! the order; `"failed"` records a declined attempt (a `payments` row with
//! status `failed`), leaves the order `pending` so it can be paid again, and
//! answers 402 Payment Required with the order and the payment id.
//!
//! Idempotency keys live in the customer's shard, so they are unique per
//! shard; clients should make them globally unique (a UUID per logical
//! request). A key whose order was deleted answers 409 instead of silently
//! placing a new order.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::body::{Fields, IdPath, JsonBody};
use super::clicks::MAX_DEVICE_ID;
use super::trace::{RequestTrace, emit, now_us};
use super::{JsonResponse, READ_FROM, ReadResponse, Shared, is_sql_state};
use crate::error::{Error, Result};
use crate::money::{MAX_CENTS, cents_to_json};

const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i64 = 10_000;
/// Longest card fingerprint accepted, in characters.
const MAX_FINGERPRINT: usize = 128;
/// The outbox event of a new order.
const ORDER_PLACED: &str = "order_placed";

#[derive(Debug, PartialEq)]
pub(crate) struct NewOrder {
    customer_id: i64,
    currency: String,
    /// `(product_id, quantity)` in request order.
    items: Vec<(i64, i32)>,
    device_id: Option<String>,
    billing_country: Option<String>,
    shipping_country: Option<String>,
}

pub(crate) fn parse_new(f: &Fields) -> Result<NewOrder> {
    f.deny_unknown(&[
        "customer_id",
        "currency",
        "items",
        "device_id",
        "billing_country",
        "shipping_country",
    ])?;
    let customer_id = f.int("customer_id")?;
    if customer_id <= 0 {
        return Err(Error::bad("customer_id", "must be a positive integer"));
    }
    let currency = f
        .opt_string("currency", 3)?
        .unwrap_or_else(|| "USD".to_owned());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::bad("currency", "must be a three-letter ISO code"));
    }
    let lines = f.objects("items")?;
    if lines.is_empty() {
        return Err(Error::bad("items", "must not be empty"));
    }
    if lines.len() > MAX_ITEMS {
        return Err(Error::bad(
            "items",
            format!("at most {MAX_ITEMS} lines per order"),
        ));
    }
    let mut items = Vec::with_capacity(lines.len());
    for line in &lines {
        line.deny_unknown(&["product_id", "quantity"])?;
        let product_id = line.int("product_id")?;
        if product_id <= 0 {
            return Err(Error::bad(
                line.path("product_id"),
                "must be a positive integer",
            ));
        }
        let quantity = line.int("quantity")?;
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(Error::bad(
                line.path("quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        items.push((product_id, quantity as i32));
    }
    Ok(NewOrder {
        customer_id,
        currency,
        items,
        device_id: f.opt_string("device_id", MAX_DEVICE_ID)?,
        billing_country: f.opt_country("billing_country")?,
        shipping_country: f.opt_country("shipping_country")?,
    })
}

/// A stable fingerprint of the order request (FNV-1a, 64 bits), stored with
/// the idempotency key to tell a retry from a different request.
fn request_hash(o: &NewOrder) -> String {
    let mut canonical = format!("v1|{}|{}", o.customer_id, o.currency);
    for (p, q) in &o.items {
        canonical.push_str(&format!("|{p}x{q}"));
    }
    // Appended only when present, so the hashes of requests without them
    // (stored before these fields existed) stay the same.
    for (name, v) in [
        ("device", &o.device_id),
        ("billing", &o.billing_country),
        ("shipping", &o.shipping_country),
    ] {
        if let Some(v) = v {
            canonical.push_str(&format!("|{name}={v}"));
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| Error::bad(IDEMPOTENCY_HEADER, "must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > 255 {
        return Err(Error::bad(
            IDEMPOTENCY_HEADER,
            "must be 1 to 255 characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// The order with its lines, or `None`.
async fn load(client: &impl GenericClient, id: i64, shard: usize) -> Result<Option<Value>> {
    let Some(o) = client
        .query_opt(
            "SELECT id, customer_id, status, currency, (total * 100)::bigint AS total_cents,
                    device_id, billing_country, shipping_country, created_at, updated_at
             FROM orders WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let items = client
        .query(
            "SELECT id, product_id, quantity, (unit_price * 100)::bigint AS unit_cents,
                    (line_total * 100)::bigint AS line_cents
             FROM order_items WHERE order_id = $1 ORDER BY id",
            &[&id],
        )
        .await?;
    let items: Vec<Value> = items
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, i64>("id"),
                "product_id": r.get::<_, i64>("product_id"),
                "quantity": r.get::<_, i32>("quantity"),
                "unit_price": cents_to_json(r.get("unit_cents")),
                "line_total": cents_to_json(r.get("line_cents")),
            })
        })
        .collect();
    Ok(Some(json!({
        "id": o.get::<_, i64>("id"),
        "shard": shard,
        "customer_id": o.get::<_, i64>("customer_id"),
        "status": o.get::<_, String>("status"),
        "currency": o.get::<_, String>("currency"),
        "total": cents_to_json(o.get("total_cents")),
        "device_id": o.get::<_, Option<String>>("device_id"),
        "billing_country": o.get::<_, Option<String>>("billing_country"),
        "shipping_country": o.get::<_, Option<String>>("shipping_country"),
        "created_at": o.get::<_, chrono::DateTime<chrono::Utc>>("created_at"),
        "updated_at": o.get::<_, chrono::DateTime<chrono::Utc>>("updated_at"),
        "items": items,
    })))
}

/// Answers a request whose idempotency key was already used.
async fn replay(
    client: &impl GenericClient,
    shard: usize,
    stored_hash: &str,
    order_id: i64,
    hash: &str,
) -> JsonResponse {
    if stored_hash != hash {
        return Err(Error::unprocessable(
            IDEMPOTENCY_HEADER,
            "this key was used for a different request",
        ));
    }
    match load(client, order_id, shard).await? {
        Some(order) => Ok((StatusCode::OK, Json(order))),
        None => Err(Error::conflict(
            IDEMPOTENCY_HEADER,
            "the order created with this key has been deleted",
        )),
    }
}

const FIND_KEY: &str = "SELECT request_hash, order_id FROM idempotency_keys WHERE key = $1";

/// `POST /orders`.
pub(crate) async fn create(
    State(state): State<Shared>,
    Extension(trace): Extension<RequestTrace>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> JsonResponse {
    let key = idempotency_key(&headers)?;
    let order = parse_new(&body)?;
    let hash = request_hash(&order);
    let shard = state
        .customer_shard(order.customer_id)
        .await?
        .ok_or_else(|| Error::unprocessable("customer_id", "unknown customer"))?;
    let pool = &state.shards[shard];

    // Fast path for a retry of a finished request: no catalog read needed.
    if let Some(key) = &key {
        let conn = pool.get().await?;
        if let Some(row) = conn.query_opt(FIND_KEY, &[key]).await? {
            return replay(&*conn, shard, row.get(0), row.get(1), &hash).await;
        }
    }

    let ids: Vec<i64> = order.items.iter().map(|(p, _)| *p).collect();
    let prices: HashMap<i64, (i64, bool)> = state
        .catalog
        .get()
        .await?
        .query(
            "SELECT id, (price * 100)::bigint, active FROM products WHERE id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut lines = Vec::with_capacity(order.items.len());
    let mut total: i64 = 0;
    for (i, (product, quantity)) in order.items.iter().enumerate() {
        let field = format!("items[{i}].product_id");
        let (unit, active) = *prices
            .get(product)
            .ok_or_else(|| Error::unprocessable(&field, "unknown product"))?;
        if !active {
            return Err(Error::unprocessable(&field, "product is not for sale"));
        }
        let line = unit * i64::from(*quantity);
        total += line;
        if line > MAX_CENTS || total > MAX_CENTS {
            return Err(Error::unprocessable("items", "order total is too large"));
        }
        lines.push((*product, *quantity, unit, line));
    }

    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let tx_start = now_us();
    // The first statement also writes the request's trace (see `emit`).
    let (tx_span, traced) = trace.for_transaction();
    let order_id: i64 = match &key {
        Some(key) => {
            // A concurrent request with the same key blocks here until the
            // first commits (then this inserts nothing) or rolls back.
            let claimed = tx
                .query_opt(
                    &format!(
                        "INSERT INTO idempotency_keys (key, customer_id, request_hash, order_id)
                         VALUES ($1, $2, $3, nextval('orders_id_seq'))
                         ON CONFLICT (key) DO NOTHING RETURNING order_id, {}",
                        emit(4)
                    ),
                    &[key, &order.customer_id, &hash, &traced],
                )
                .await?;
            match claimed {
                Some(row) => row.get(0),
                None => {
                    tx.rollback().await?;
                    let row = conn
                        .query_opt(FIND_KEY, &[key])
                        .await?
                        .ok_or_else(|| Error::Internal("idempotency key vanished".into()))?;
                    return replay(&*conn, shard, row.get(0), row.get(1), &hash).await;
                }
            }
        }
        None => tx
            .query_one(
                &format!("SELECT nextval('orders_id_seq'), {}", emit(1)),
                &[&traced],
            )
            .await?
            .get(0),
    };
    tx.execute(
        "INSERT INTO orders (id, customer_id, status, currency, total,
                             device_id, billing_country, shipping_country)
         VALUES ($1, $2, 'pending', $3, $4::bigint::numeric / 100, $5, $6, $7)",
        &[
            &order_id,
            &order.customer_id,
            &order.currency,
            &total,
            &order.device_id,
            &order.billing_country,
            &order.shipping_country,
        ],
    )
    .await
    .map_err(|e| {
        if is_sql_state(&e, &SqlState::FOREIGN_KEY_VIOLATION) {
            Error::unprocessable("customer_id", "unknown customer")
        } else {
            e.into()
        }
    })?;
    let insert_line = tx
        .prepare(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price, line_total)
             VALUES ($1, $2, $3, $4::bigint::numeric / 100, $5::bigint::numeric / 100)",
        )
        .await?;
    for (product, quantity, unit, line) in &lines {
        tx.execute(&insert_line, &[&order_id, product, quantity, unit, line])
            .await?;
    }
    let created = load(&tx, order_id, shard)
        .await?
        .ok_or_else(|| Error::Internal("order vanished inside its transaction".into()))?;
    write_outbox(&tx, order.customer_id, ORDER_PLACED, &created).await?;
    tx.commit().await?;
    trace.transaction_span(tx_span, tx_start, "place order", order_id, shard);
    tracing::info!(order_id, shard, lines = lines.len(), "order placed");
    Ok((StatusCode::CREATED, Json(created)))
}

/// Writes one business event to the outbox, inside the caller's transaction.
async fn write_outbox(
    client: &impl GenericClient,
    customer_id: i64,
    event_type: &str,
    payload: &Value,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO outbox (customer_id, event_type, payload) VALUES ($1, $2, $3)",
            &[&customer_id, &event_type, &payload.to_string()],
        )
        .await?;
    Ok(())
}

/// `GET /orders/{id}`.
pub(crate) async fn fetch(State(state): State<Shared>, IdPath(id): IdPath) -> ReadResponse {
    let not_found = Error::NotFound {
        entity: "order",
        id,
    };
    let Some((shard, _)) = state.shard_for_id(id) else {
        return Err(not_found);
    };
    let (order, from) = state.read(shard, |c| Box::pin(load(c, id, shard))).await?;
    Ok((
        StatusCode::OK,
        [(READ_FROM, from.as_str())],
        Json(order.ok_or(not_found)?),
    ))
}

/// `GET /orders/{id}/shipment`: the order's shipment, or 404 before it
/// ships (the storefront's order page at the gateway reads it).
pub(crate) async fn shipment(State(state): State<Shared>, IdPath(id): IdPath) -> ReadResponse {
    let not_found = Error::NotFound {
        entity: "shipment of order",
        id,
    };
    let Some((shard, _)) = state.shard_for_id(id) else {
        return Err(not_found);
    };
    let (shipment, from) = state
        .read(shard, |c| {
            Box::pin(async move {
            let row = c
                .query_opt(
                    "SELECT id, carrier, status, shipped_at, delivered_at FROM shipments
                     WHERE order_id = $1 ORDER BY id DESC LIMIT 1",
                    &[&id],
                )
                .await?;
            Ok(row.map(|row| {
                json!({
                    "id": row.get::<_, i64>("id"),
                    "order_id": id,
                    "carrier": row.get::<_, String>("carrier"),
                    "status": row.get::<_, String>("status"),
                    "shipped_at": row.get::<_, chrono::DateTime<chrono::Utc>>("shipped_at"),
                    "delivered_at": row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("delivered_at"),
                })
            }))
            })
        })
        .await?;
    Ok((
        StatusCode::OK,
        [(READ_FROM, from.as_str())],
        Json(shipment.ok_or(not_found)?),
    ))
}

/// What the (simulated) card processor answered to a payment attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Captured,
    Failed,
}

impl Outcome {
    fn parse(f: &Fields) -> Result<Outcome> {
        match f.opt_string("outcome", 16)?.as_deref() {
            None | Some("captured") => Ok(Outcome::Captured),
            Some("failed") => Ok(Outcome::Failed),
            Some(_) => Err(Error::bad("outcome", "must be \"captured\" or \"failed\"")),
        }
    }

    fn status(self) -> &'static str {
        match self {
            Outcome::Captured => "captured",
            Outcome::Failed => "failed",
        }
    }
}

/// A status change of an order and the rows it writes alongside.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action<'a> {
    Pay {
        method: &'a str,
        card_fingerprint: Option<&'a str>,
        outcome: Outcome,
    },
    Ship {
        carrier: &'a str,
    },
    Deliver,
    Cancel,
    Refund,
    Delete,
}

impl Action<'_> {
    fn name(&self) -> &'static str {
        match self {
            Action::Pay { .. } => "pay",
            Action::Ship { .. } => "ship",
            Action::Deliver => "deliver",
            Action::Cancel => "cancel",
            Action::Refund => "refund",
            Action::Delete => "delete",
        }
    }

    /// The statuses the action may start from.
    fn from(&self) -> &'static [&'static str] {
        match self {
            Action::Pay { .. } | Action::Cancel | Action::Delete => &["pending"],
            Action::Ship { .. } => &["paid"],
            Action::Deliver => &["shipped"],
            Action::Refund => &["paid", "shipped", "delivered"],
        }
    }

    /// The status after the action; `None` when the order is removed.
    fn to(&self) -> Option<&'static str> {
        match self {
            Action::Pay {
                outcome: Outcome::Failed,
                ..
            } => Some("pending"),
            Action::Pay { .. } => Some("paid"),
            Action::Ship { .. } => Some("shipped"),
            Action::Deliver => Some("delivered"),
            Action::Cancel => Some("cancelled"),
            Action::Refund => Some("refunded"),
            Action::Delete => None,
        }
    }
}

/// What a transition left: the order (`None` once deleted) and the id of
/// the payment row it wrote, if any.
struct Transitioned {
    order: Option<Value>,
    payment_id: Option<i64>,
}

/// Applies `action` under a row lock, so that concurrent transitions of the
/// same order serialise and each checks the status the other left.
async fn transition(
    state: &Shared,
    trace: &RequestTrace,
    id: i64,
    action: Action<'_>,
) -> Result<Transitioned> {
    let not_found = Error::NotFound {
        entity: "order",
        id,
    };
    let Some((shard, pool)) = state.shard_for_id(id) else {
        return Err(not_found);
    };
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let tx_start = now_us();
    // The first statement also writes the request's trace (see `emit`).
    let (tx_span, traced) = trace.for_transaction();
    let row = tx
        .query_opt(
            &format!(
                "SELECT status, (total * 100)::bigint, customer_id, {} FROM orders WHERE id = $1 FOR UPDATE",
                emit(2)
            ),
            &[&id, &traced],
        )
        .await?
        .ok_or(not_found)?;
    let status: String = row.get(0);
    let total: i64 = row.get(1);
    let customer_id: i64 = row.get(2);
    let mut payment_id = None;
    if !action.from().contains(&status.as_str()) {
        return Err(Error::conflict(
            "status",
            format!("cannot {} an order that is {status}", action.name()),
        ));
    }
    match action {
        Action::Pay {
            method,
            card_fingerprint,
            outcome,
        } => {
            let row = tx
                .query_one(
                    "INSERT INTO payments (order_id, amount, method, status, customer_id, card_fingerprint)
                     VALUES ($1, $2::bigint::numeric / 100, $3, $4, $5, $6) RETURNING id",
                    &[
                        &id,
                        &total,
                        &method,
                        &outcome.status(),
                        &customer_id,
                        &card_fingerprint,
                    ],
                )
                .await?;
            payment_id = Some(row.get(0));
        }
        Action::Ship { carrier } => {
            tx.execute(
                "INSERT INTO shipments (order_id, carrier, status) VALUES ($1, $2, 'shipped')",
                &[&id, &carrier],
            )
            .await?;
        }
        Action::Deliver => {
            tx.execute(
                "UPDATE shipments SET status = 'delivered', delivered_at = now(), updated_at = now()
                 WHERE order_id = $1 AND status = 'shipped'",
                &[&id],
            )
            .await?;
        }
        Action::Refund => {
            tx.execute(
                "UPDATE payments SET status = 'refunded', updated_at = now()
                 WHERE order_id = $1 AND status = 'captured'",
                &[&id],
            )
            .await?;
        }
        Action::Cancel | Action::Delete => {}
    }
    let result = match action.to() {
        // A failed payment leaves the order as it was.
        Some(to) if to == status => load(&tx, id, shard).await?,
        Some(to) => {
            tx.execute(
                "UPDATE orders SET status = $2, updated_at = now() WHERE id = $1",
                &[&id, &to],
            )
            .await?;
            load(&tx, id, shard).await?
        }
        None => {
            // Items go with the order (ON DELETE CASCADE).
            tx.execute("DELETE FROM orders WHERE id = $1", &[&id])
                .await?;
            None
        }
    };
    tx.commit().await?;
    trace.transaction_span(tx_span, tx_start, action.name(), id, shard);
    tracing::info!(
        order_id = id,
        shard,
        action = action.name(),
        "order transition"
    );
    Ok(Transitioned {
        order: result,
        payment_id,
    })
}

async fn respond(
    state: &Shared,
    trace: &RequestTrace,
    id: i64,
    action: Action<'_>,
) -> JsonResponse {
    let order = transition(state, trace, id, action)
        .await?
        .order
        .ok_or_else(|| Error::Internal("transition lost its order".into()))?;
    Ok((StatusCode::OK, Json(order)))
}

/// A payment request: `{method, card_fingerprint?, outcome?}`.
#[derive(Debug, PartialEq)]
pub(crate) struct PayRequest {
    method: String,
    card_fingerprint: Option<String>,
    outcome: Outcome,
}

pub(crate) fn parse_pay(f: &Fields) -> Result<PayRequest> {
    f.deny_unknown(&["method", "card_fingerprint", "outcome"])?;
    Ok(PayRequest {
        method: f.string("method", 32)?,
        card_fingerprint: f.opt_string("card_fingerprint", MAX_FINGERPRINT)?,
        outcome: Outcome::parse(f)?,
    })
}

/// `POST /orders/{id}/pay` with `{method, card_fingerprint?, outcome?}`:
/// 200 with the paid order, or 402 with `{error, field: "outcome",
/// payment_id, order}` when the caller reports the card declined.
pub(crate) async fn pay(
    State(state): State<Shared>,
    Extension(trace): Extension<RequestTrace>,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody,
) -> JsonResponse {
    let req = parse_pay(&body)?;
    let action = Action::Pay {
        method: &req.method,
        card_fingerprint: req.card_fingerprint.as_deref(),
        outcome: req.outcome,
    };
    let done = transition(&state, &trace, id, action).await?;
    let order = done
        .order
        .ok_or_else(|| Error::Internal("transition lost its order".into()))?;
    match req.outcome {
        Outcome::Captured => Ok((StatusCode::OK, Json(order))),
        Outcome::Failed => Ok((
            StatusCode::PAYMENT_REQUIRED,
            Json(json!({
                "error": "payment failed: the card was declined; the order stays pending and can be paid again",
                "field": "outcome",
                "payment_id": done.payment_id,
                "order": order,
            })),
        )),
    }
}

/// `POST /orders/{id}/ship` with `{carrier}`.
pub(crate) async fn ship(
    State(state): State<Shared>,
    Extension(trace): Extension<RequestTrace>,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody,
) -> JsonResponse {
    body.deny_unknown(&["carrier"])?;
    let carrier = body.string("carrier", 64)?;
    respond(&state, &trace, id, Action::Ship { carrier: &carrier }).await
}

/// `POST /orders/{id}/deliver`.
pub(crate) async fn deliver(
    State(state): State<Shared>,
    Extension(trace): Extension<RequestTrace>,
    IdPath(id): IdPath,
) -> JsonResponse {
    respond(&state, &trace, id, Action::Deliver).await
}

/// `POST /orders/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<Shared>,
    Extension(trace): Extension<RequestTrace>,
    IdPath(id): IdPath,
) -> JsonResponse {
    respond(&state, &trace, id, Action::Cancel).await
}

/// `POST /orders/{id}/refund`.
pub(crate) async fn refund(
    State(state): State<Shared>,
    Extension(trace): Extension<RequestTrace>,
    IdPath(id): IdPath,
) -> JsonResponse {
    respond(&state, &trace, id, Action::Refund).await
}

/// `DELETE /orders/{id}`: only pending orders may be deleted.
pub(crate) async fn delete(
    State(state): State<Shared>,
    Extension(trace): Extension<RequestTrace>,
    IdPath(id): IdPath,
) -> Result<StatusCode> {
    transition(&state, &trace, id, Action::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::body::{bad_field, parse_object};

    fn parse(body: &str) -> Result<NewOrder> {
        parse_new(&parse_object(body.as_bytes())?)
    }

    fn field_of(body: &str) -> String {
        bad_field(parse(body))
    }

    #[test]
    fn valid_order_parses_with_default_currency() {
        let o =
            parse(r#"{"customer_id": 3, "items": [{"product_id": 1, "quantity": 2}]}"#).unwrap();
        assert_eq!(o.currency, "USD");
        assert_eq!(o.items, vec![(1, 2)]);
    }

    #[test]
    fn invalid_orders_name_the_field() {
        assert_eq!(
            field_of(r#"{"items": [{"product_id": 1, "quantity": 2}]}"#),
            "customer_id"
        );
        assert_eq!(
            field_of(r#"{"customer_id": "x", "items": []}"#),
            "customer_id"
        );
        assert_eq!(field_of(r#"{"customer_id": 3, "items": []}"#), "items");
        assert_eq!(field_of(r#"{"customer_id": 3}"#), "items");
        assert_eq!(field_of(r#"{"customer_id": 3, "items": {}}"#), "items");
        assert_eq!(
            field_of(r#"{"customer_id": 3, "items": [{"product_id": 1, "quantity": 0}]}"#),
            "items[0].quantity"
        );
        assert_eq!(
            field_of(
                r#"{"customer_id": 3, "items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": -4}]}"#
            ),
            "items[1].quantity"
        );
        assert_eq!(
            field_of(r#"{"customer_id": 3, "items": [{"quantity": 1}]}"#),
            "items[0].product_id"
        );
        assert_eq!(
            field_of(
                r#"{"customer_id": 3, "currency": "usd", "items": [{"product_id": 1, "quantity": 1}]}"#
            ),
            "currency"
        );
        assert_eq!(
            field_of(
                r#"{"customer_id": 3, "items": [{"product_id": 1, "quantity": 1, "price": 1}]}"#
            ),
            "items[0].price"
        );
    }

    #[test]
    fn fraud_signals_are_optional_and_validated() {
        let base = r#"{"customer_id": 3, "items": [{"product_id": 1, "quantity": 2}]"#;
        let with = |extra: &str| format!("{base}, {extra}}}");
        let o = parse(&with(
            r#""device_id": "dev-9", "billing_country": "DE", "shipping_country": "FR""#,
        ))
        .unwrap();
        assert_eq!(o.device_id.as_deref(), Some("dev-9"));
        assert_eq!(o.billing_country.as_deref(), Some("DE"));
        assert_eq!(o.shipping_country.as_deref(), Some("FR"));
        let plain = parse(&format!("{base}}}")).unwrap();
        assert_eq!((plain.device_id, plain.billing_country), (None, None));
        assert_eq!(field_of(&with(r#""device_id": """#)), "device_id");
        assert_eq!(
            field_of(&with(&format!(r#""device_id": "{}""#, "d".repeat(65)))),
            "device_id"
        );
        assert_eq!(
            field_of(&with(r#""billing_country": "de""#)),
            "billing_country"
        );
        assert_eq!(
            field_of(&with(r#""shipping_country": "FRA""#)),
            "shipping_country"
        );
        assert_eq!(
            field_of(&with(r#""shipping_country": 7"#)),
            "shipping_country"
        );
    }

    #[test]
    fn payment_requests_are_validated() {
        let pay = |body: &str| parse_pay(&parse_object(body.as_bytes())?);
        let p = pay(r#"{"method": "card"}"#).unwrap();
        assert_eq!((p.outcome, p.card_fingerprint), (Outcome::Captured, None));
        let p =
            pay(r#"{"method": "card", "card_fingerprint": "fp-1", "outcome": "failed"}"#).unwrap();
        assert_eq!(p.outcome, Outcome::Failed);
        assert_eq!(p.card_fingerprint.as_deref(), Some("fp-1"));
        assert_eq!(
            bad_field(pay(r#"{"method": "card", "outcome": "lost"}"#)),
            "outcome"
        );
        assert_eq!(
            bad_field(pay(r#"{"method": "card", "card_fingerprint": ""}"#)),
            "card_fingerprint"
        );
        assert_eq!(bad_field(pay(r#"{"outcome": "failed"}"#)), "method");
        assert_eq!(bad_field(pay(r#"{"method": "card", "cvv": "123"}"#)), "cvv");
    }

    #[test]
    fn request_hash_tells_bodies_apart() {
        let a =
            parse(r#"{"customer_id": 3, "items": [{"product_id": 1, "quantity": 2}]}"#).unwrap();
        let b = parse(
            r#"{"items": [{"quantity": 2, "product_id": 1}], "customer_id": 3, "currency": "USD"}"#,
        )
        .unwrap();
        let c =
            parse(r#"{"customer_id": 3, "items": [{"product_id": 1, "quantity": 3}]}"#).unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&c));
        // The hash of a request without the new fields is what it always was.
        assert_eq!(request_hash(&a), "fnv1a64:a42c7a609c440f10");
        let d = parse(
            r#"{"customer_id": 3, "items": [{"product_id": 1, "quantity": 2}], "device_id": "x"}"#,
        )
        .unwrap();
        assert_ne!(request_hash(&a), request_hash(&d));
        assert!(request_hash(&a).starts_with("fnv1a64:"));
    }

    #[test]
    fn lifecycle_allows_only_valid_transitions() {
        let pay = |outcome| Action::Pay {
            method: "card",
            card_fingerprint: None,
            outcome,
        };
        assert_eq!(pay(Outcome::Captured).from(), &["pending"]);
        assert_eq!(pay(Outcome::Captured).to(), Some("paid"));
        assert_eq!(pay(Outcome::Failed).to(), Some("pending"));
        assert_eq!(Action::Ship { carrier: "x" }.to(), Some("shipped"));
        assert!(Action::Refund.from().contains(&"delivered"));
        assert!(!Action::Refund.from().contains(&"pending"));
        assert_eq!(Action::Delete.to(), None);
        assert_eq!(Action::Deliver.from(), &["shipped"]);
    }

    #[test]
    fn idempotency_header_is_validated() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert(IDEMPOTENCY_HEADER, "k-1".parse().unwrap());
        assert_eq!(idempotency_key(&h).unwrap().as_deref(), Some("k-1"));
        h.insert(IDEMPOTENCY_HEADER, "x".repeat(300).parse().unwrap());
        assert!(
            matches!(idempotency_key(&h), Err(Error::BadRequest { field, .. }) if field == IDEMPOTENCY_HEADER)
        );
    }
}
