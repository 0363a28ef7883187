//! Product views and add-to-carts: `POST /products/{id}/view` and
//! `POST /products/{id}/cart` with `{customer_id, device_id}`.
//!
//! Best effort (see [`crate::clickstream`]): the answer is 202 once the
//! event is queued for the broker, before it is delivered; a click that is
//! later lost is counted, not reported to the caller. Ids are taken as
//! given (no database lookup per click): consumers join them with the
//! catalog and the customers. Without a configured broker the endpoints
//! answer 503.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;
use tributary_model::clickstream::ClickKind;

use super::body::{Fields, IdPath, JsonBody};
use super::{JsonResponse, Shared};
use crate::error::{Error, Result};

/// Longest device id accepted, in characters.
pub(crate) const MAX_DEVICE_ID: usize = 64;

#[derive(Debug, PartialEq)]
pub(crate) struct Click {
    customer_id: i64,
    device_id: String,
}

pub(crate) fn parse(f: &Fields) -> Result<Click> {
    f.deny_unknown(&["customer_id", "device_id"])?;
    let customer_id = f.int("customer_id")?;
    if customer_id <= 0 {
        return Err(Error::bad("customer_id", "must be a positive integer"));
    }
    Ok(Click {
        customer_id,
        device_id: f.string("device_id", MAX_DEVICE_ID)?,
    })
}

async fn click(state: Shared, product_id: i64, body: Fields, kind: ClickKind) -> JsonResponse {
    let click = parse(&body)?;
    let clickstream = state.clickstream.as_ref().ok_or_else(|| Error::Unavailable {
        field: "clickstream".into(),
        reason: "this order service runs without a Kafka broker ([kafka] or the local stack's); product views and add-to-carts cannot be published".into(),
    })?;
    let event = clickstream.publish(kind, click.customer_id, product_id, click.device_id);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": event.event_id, "kind": kind.as_str(), "ts_us": event.ts_us})),
    ))
}

/// `POST /products/{id}/view`.
pub(crate) async fn view(
    State(state): State<Shared>,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody,
) -> JsonResponse {
    click(state, id, body, ClickKind::View).await
}

/// `POST /products/{id}/cart`.
pub(crate) async fn add_to_cart(
    State(state): State<Shared>,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody,
) -> JsonResponse {
    click(state, id, body, ClickKind::AddToCart).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::body::{bad_field, parse_object};

    fn field_of(body: &str) -> String {
        bad_field(parse(&parse_object(body.as_bytes()).unwrap()))
    }

    #[test]
    fn clicks_are_validated_by_field() {
        let ok = parse(&parse_object(br#"{"customer_id": 4, "device_id": "dev-1"}"#).unwrap());
        assert_eq!(
            ok.unwrap(),
            Click {
                customer_id: 4,
                device_id: "dev-1".into()
            }
        );
        assert_eq!(field_of(r#"{"device_id": "d"}"#), "customer_id");
        assert_eq!(
            field_of(r#"{"customer_id": 0, "device_id": "d"}"#),
            "customer_id"
        );
        assert_eq!(field_of(r#"{"customer_id": 4}"#), "device_id");
        assert_eq!(
            field_of(r#"{"customer_id": 4, "device_id": " "}"#),
            "device_id"
        );
        let long = format!(r#"{{"customer_id": 4, "device_id": "{}"}}"#, "x".repeat(65));
        assert_eq!(field_of(&long), "device_id");
        assert_eq!(
            field_of(r#"{"customer_id": 4, "device_id": "d", "page": 1}"#),
            "page"
        );
    }
}
