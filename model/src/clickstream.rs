//! The clickstream: product views and add-to-carts, which the order service
//! publishes straight to `<prefix>.events.clickstream` (no database row, no
//! CDC).
//!
//! Promises and their limits:
//! - Best effort. A click the producer could not deliver is counted by the
//!   order service (`tributary_oltp_clickstream_dropped_total{reason}`) and
//!   lost; anything that must not be lost goes through the outbox table
//!   instead, in the transaction that creates it.
//! - Event time is `ts_us`, set by the order service when it accepted the
//!   request (microseconds since the Unix epoch). The topic carries no
//!   watermarks: consumers bound out-of-orderness themselves.
//! - The message key is the customer id in decimal (`b"42"`), so one
//!   customer's clicks stay in order on one partition.
//! - `event_id` is a UUID v4, unique per click; a consumer that sees an id
//!   twice saw the same click twice.
//! - Readers ignore fields they do not know, so fields can be added.
//!
//! ```
//! use tributary_model::clickstream::{ClickEvent, ClickKind, clickstream_topic};
//! let e = ClickEvent {
//!     event_id: "0b7c5e7e-3f0a-4a57-9d43-6f1f2b1c9a10".into(),
//!     kind: ClickKind::AddToCart,
//!     customer_id: 42,
//!     product_id: 7,
//!     device_id: "dev-a1".into(),
//!     ts_us: 1_700_000_000_000_000,
//! };
//! assert_eq!(ClickEvent::from_json(&e.to_json()).unwrap(), e);
//! assert_eq!(e.key(), b"42");
//! assert_eq!(clickstream_topic("tributary"), "tributary.events.clickstream");
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The topic of the clickstream under `prefix` (the Kafka topic prefix).
pub fn clickstream_topic(prefix: &str) -> String {
    format!("{prefix}.events.clickstream")
}

/// What the customer did with the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClickKind {
    /// Looked at the product page (`"view"`).
    View,
    /// Put the product in the cart (`"add_to_cart"`).
    AddToCart,
}

impl ClickKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClickKind::View => "view",
            ClickKind::AddToCart => "add_to_cart",
        }
    }

    fn parse(s: &str) -> Option<ClickKind> {
        match s {
            "view" => Some(ClickKind::View),
            "add_to_cart" => Some(ClickKind::AddToCart),
            _ => None,
        }
    }
}

/// One click, as JSON on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClickEvent {
    /// UUID v4, unique per click.
    pub event_id: String,
    pub kind: ClickKind,
    pub customer_id: i64,
    pub product_id: i64,
    /// The customer's device, as the client named it (1 to 64 characters).
    pub device_id: String,
    /// Event time: when the order service accepted the click, microseconds
    /// since the Unix epoch.
    pub ts_us: i64,
}

impl ClickEvent {
    /// The message key: the customer id in decimal.
    pub fn key(&self) -> Vec<u8> {
        self.customer_id.to_string().into_bytes()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a click event serialises")
    }

    /// Parses a clickstream message; the error names the field that was
    /// missing or wrong.
    pub fn from_json(payload: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(payload).map_err(|e| {
            bad(
                "(message)",
                format!(
                    "is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let Value::Object(o) = value else {
            return Err(bad("(message)", "expected a JSON object"));
        };
        let kind = string(&o, "kind")?;
        let kind = ClickKind::parse(kind).ok_or_else(|| {
            bad(
                "kind",
                format!("expected \"view\" or \"add_to_cart\", got {kind:?}"),
            )
        })?;
        let event_id = string(&o, "event_id")?;
        if event_id.is_empty() {
            return Err(bad("event_id", "must not be empty"));
        }
        let device_id = string(&o, "device_id")?;
        if device_id.is_empty() {
            return Err(bad("device_id", "must not be empty"));
        }
        Ok(ClickEvent {
            event_id: event_id.to_string(),
            kind,
            customer_id: int(&o, "customer_id")?,
            product_id: int(&o, "product_id")?,
            device_id: device_id.to_string(),
            ts_us: int(&o, "ts_us")?,
        })
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidClickEvent {
        field,
        reason: reason.into(),
    }
}

fn string<'a>(o: &'a Map<String, Value>, field: &'static str) -> Result<&'a str> {
    match o.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(field, "expected a string")),
        None => Err(bad(field, "missing")),
    }
}

fn int(o: &Map<String, Value>, field: &'static str) -> Result<i64> {
    match o.get(field) {
        Some(v) => v.as_i64().ok_or_else(|| bad(field, "expected an integer")),
        None => Err(bad(field, "missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click() -> ClickEvent {
        ClickEvent {
            event_id: "e-1".into(),
            kind: ClickKind::View,
            customer_id: 9,
            product_id: 3,
            device_id: "d".into(),
            ts_us: 5,
        }
    }

    #[test]
    fn wire_form_is_stable() {
        let text = String::from_utf8(click().to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"event_id":"e-1","kind":"view","customer_id":9,"product_id":3,"device_id":"d","ts_us":5}"#
        );
        let cart = ClickEvent {
            kind: ClickKind::AddToCart,
            ..click()
        };
        assert!(
            String::from_utf8(cart.to_json())
                .unwrap()
                .contains(r#""kind":"add_to_cart""#)
        );
        assert_eq!(ClickKind::AddToCart.as_str(), "add_to_cart");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let with_extra =
            br#"{"event_id":"e-1","kind":"view","customer_id":9,"product_id":3,"device_id":"d","ts_us":5,"page":"/p/3"}"#;
        assert_eq!(ClickEvent::from_json(with_extra).unwrap(), click());
    }

    #[test]
    fn errors_name_the_field() {
        let field_of = |payload: &str| match ClickEvent::from_json(payload.as_bytes()) {
            Err(Error::InvalidClickEvent { field, .. }) => field,
            other => panic!("expected a field error for {payload}, got {other:?}"),
        };
        let ok = String::from_utf8(click().to_json()).unwrap();
        assert_eq!(field_of(&ok.replace(r#""view""#, r#""buy""#)), "kind");
        assert_eq!(
            field_of(&ok.replace(r#""customer_id":9"#, r#""customer_id":"9""#)),
            "customer_id"
        );
        assert_eq!(
            field_of(&ok.replace(r#","product_id":3"#, "")),
            "product_id"
        );
        assert_eq!(
            field_of(&ok.replace(r#""ts_us":5"#, r#""ts_us":5.5"#)),
            "ts_us"
        );
        assert_eq!(
            field_of(&ok.replace(r#""device_id":"d""#, r#""device_id":"""#)),
            "device_id"
        );
        assert_eq!(
            field_of(&ok.replace(r#""event_id":"e-1""#, r#""event_id":1"#)),
            "event_id"
        );
        assert_eq!(field_of("[1]"), "(message)");
        assert_eq!(field_of("{"), "(message)");
        let e = ClickEvent::from_json(ok.replace(r#""view""#, r#""buy""#).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("`kind`"), "{e}");
    }
}
