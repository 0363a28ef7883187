//! What the detector reads, as facts of one customer's timeline.
//!
//! Change events of `orders`, `payments` and `customers` (CDC topics) and
//! the clickstream become [`Input`]s: a customer, an event time and a
//! [`Fact`]. Event time is the source commit time (`source.ts_us`); rows
//! of an initial snapshot (`op = r`) have no commit of their own, so they
//! take the row's `created_at` instead, which keeps a history loaded by a
//! snapshot spread over the time it happened.
//!
//! Only what happened counts: an order's or a payment's creation (`c`, or
//! `r` in a snapshot); later updates (status changes, refunds) and deletes
//! do not make a new order or payment. A customer's insert and updates
//! carry their home country and creation time.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tributary_model::clickstream::{ClickEvent, ClickKind};
use tributary_model::event::{ChangeEvent, Op};
use tributary_stream::EventTime;
use tributary_stream::reorder::Timed;

use crate::{Error, Result};

/// One fact of one customer's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fact {
    Customer {
        created_at_us: Option<i64>,
        country: Option<String>,
    },
    Order {
        order_id: i64,
        total_cents: i64,
        device: Option<String>,
        billing: Option<String>,
        shipping: Option<String>,
    },
    Payment {
        payment_id: i64,
        order_id: i64,
        amount_cents: i64,
        failed: bool,
        card: Option<String>,
    },
    AddToCart {
        product_id: i64,
        device: String,
    },
}

/// A fact with its customer, event time and a tiebreak that orders facts
/// of the same microsecond the same way on every run (the event id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub customer_id: i64,
    pub t: EventTime,
    /// The source commit time, for the alert's latency (the same as `t`
    /// except for snapshot rows).
    pub commit_us: i64,
    pub id: String,
    pub fact: Fact,
}

impl Timed for Input {
    fn event_time(&self) -> EventTime {
        self.t
    }

    fn tiebreak(&self) -> String {
        self.id.clone()
    }
}

/// A change event as an input, or `None` for changes the rules ignore.
pub fn from_change(ev: &ChangeEvent) -> Result<Option<Input>> {
    let table = ev.source.table.as_str();
    let created = matches!(ev.op, Op::Create | Op::Read);
    let row = match (table, ev.op) {
        ("customers", Op::Create | Op::Read | Op::Update) => ev.after.as_ref(),
        ("orders" | "payments", _) if created => ev.after.as_ref(),
        _ => None,
    };
    let Some(row) = row else { return Ok(None) };
    let field = |name: &'static str| Field {
        row,
        name,
        event: &ev.event_id,
    };
    let t = if ev.op == Op::Read {
        field("created_at")
            .timestamp_opt()?
            .unwrap_or(ev.source.ts_us)
    } else {
        ev.source.ts_us
    };
    let (customer_id, fact) = match table {
        "customers" => (
            field("id").int()?,
            Fact::Customer {
                created_at_us: field("created_at").timestamp_opt()?,
                country: field("country").text_opt()?,
            },
        ),
        "orders" => (
            field("customer_id").int()?,
            Fact::Order {
                order_id: field("id").int()?,
                total_cents: field("total").cents()?,
                device: field("device_id").text_opt()?,
                billing: field("billing_country").text_opt()?,
                shipping: field("shipping_country").text_opt()?,
            },
        ),
        "payments" => {
            // Payments written before customer_id existed cannot be placed
            // on a customer's timeline.
            let Some(customer_id) = field("customer_id").int_opt()? else {
                return Ok(None);
            };
            (
                customer_id,
                Fact::Payment {
                    payment_id: field("id").int()?,
                    order_id: field("order_id").int()?,
                    amount_cents: field("amount").cents()?,
                    failed: field("status").text_opt()?.as_deref() == Some("failed"),
                    card: field("card_fingerprint").text_opt()?,
                },
            )
        }
        _ => return Ok(None),
    };
    Ok(Some(Input {
        customer_id,
        t,
        commit_us: ev.source.ts_us,
        id: ev.event_id.clone(),
        fact,
    }))
}

/// A clickstream event as an input; views are not a fact of any rule.
pub fn from_click(ev: &ClickEvent) -> Option<Input> {
    match ev.kind {
        ClickKind::AddToCart => Some(Input {
            customer_id: ev.customer_id,
            t: ev.ts_us,
            commit_us: ev.ts_us,
            id: ev.event_id.clone(),
            fact: Fact::AddToCart {
                product_id: ev.product_id,
                device: ev.device_id.clone(),
            },
        }),
        ClickKind::View => None,
    }
}

/// One column of a row image, read with an error that names it.
struct Field<'a> {
    row: &'a Map<String, Value>,
    name: &'a str,
    event: &'a str,
}

impl Field<'_> {
    fn bad(&self, what: &str) -> Error {
        Error::Input(format!(
            "event {}: column `{}` {what}",
            self.event, self.name
        ))
    }

    fn value(&self) -> Option<&Value> {
        self.row.get(self.name).filter(|v| !v.is_null())
    }

    fn int_opt(&self) -> Result<Option<i64>> {
        self.value()
            .map(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| self.bad("is not an integer"))
            })
            .transpose()
    }

    fn int(&self) -> Result<i64> {
        self.int_opt()?.ok_or_else(|| self.bad("is missing"))
    }

    fn text_opt(&self) -> Result<Option<String>> {
        self.value()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.bad("is not text"))
            })
            .transpose()
    }

    /// A numeric(12,2) (text on the wire) as cents, exactly.
    fn cents(&self) -> Result<i64> {
        let v = self.value().ok_or_else(|| self.bad("is missing"))?;
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(self.bad("is not a number")),
        };
        parse_cents(&text).ok_or_else(|| self.bad("is not an amount with at most two decimals"))
    }

    fn timestamp_opt(&self) -> Result<Option<i64>> {
        self.value()
            .map(|v| {
                v.as_str()
                    .and_then(parse_rfc3339_us)
                    .ok_or_else(|| self.bad("is not a timestamp"))
            })
            .transpose()
    }
}

/// `"12.3"`, `"-0.05"`, `"7"` as cents; `None` beyond two decimals.
pub fn parse_cents(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    let cents = whole.checked_mul(100)?.checked_add(frac)?;
    Some(if neg { -cents } else { cents })
}

/// The lake's timestamp text, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as
/// microseconds since the epoch.
pub fn parse_rfc3339_us(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = &text[19..text.len() - 1];
    let micros = match frac.strip_prefix('.') {
        None if frac.is_empty() => 0,
        Some(f) if !f.is_empty() && f.len() <= 6 => format!("{f:0<6}").parse().ok()?,
        _ => return None,
    };
    let days = tributary_model::pgtype::days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3_600 + mi * 60 + s) * 1_000_000) + micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_model::pgtype::format_utc_micros;

    #[test]
    fn amounts_are_exact_cents() {
        assert_eq!(parse_cents("12.3"), Some(1230));
        assert_eq!(parse_cents("0.05"), Some(5));
        assert_eq!(parse_cents("-1.99"), Some(-199));
        assert_eq!(parse_cents("7"), Some(700));
        assert_eq!(parse_cents("1.999"), None);
        assert_eq!(parse_cents(".5"), None);
    }

    #[test]
    fn timestamps_read_back_what_the_lake_writes() {
        for us in [0, 1_700_000_000_123_456, 1_733_390_000_000_001] {
            assert_eq!(parse_rfc3339_us(&format_utc_micros(us)), Some(us));
        }
        assert_eq!(parse_rfc3339_us("2024-01-01 00:00:00"), None);
    }
}
