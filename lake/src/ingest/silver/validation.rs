//! Values silver cannot store exactly.
//!
//! Rule kept here: a NaN or infinite numeric, or one with more digits than
//! its decimal column, is refused as [`crate::Error::Incompatible`] with the
//! table, column, LSN and event id, and never with the value itself.

use arrow::datatypes::{DataType, SchemaRef};
use serde_json::Value;
use tributary_model::event::ChangeEvent;

use crate::{Error, Result};

/// Fails on a value silver cannot store exactly: a NaN or infinite numeric,
/// or one with more digits than its decimal column. Never names the value.
pub(crate) fn check_values(table: &str, schema: &SchemaRef, events: &[ChangeEvent]) -> Result<()> {
    let decimals: Vec<(&str, u8, i8)> = schema
        .fields()
        .iter()
        .filter_map(|f| match f.data_type() {
            DataType::Decimal128(p, s) => Some((f.name().as_str(), *p, *s)),
            _ => None,
        })
        .collect();
    if decimals.is_empty() {
        return Ok(());
    }
    for ev in events {
        let Some(after) = ev.after.as_ref() else {
            continue;
        };
        for (column, p, s) in &decimals {
            let Some(v) = after.get(*column) else {
                continue;
            };
            if let Err(reason) = decimal_fits(v, *p, *s) {
                return Err(Error::Incompatible(Box::new(crate::IncompatibleChange {
                    table: table.to_string(),
                    column: column.to_string(),
                    lsn: ev.source.lsn.to_string(),
                    event_id: ev.event_id.clone(),
                    reason,
                    remedy: format!(
                        "every event before this one is applied; rewrite silver.{table} with \"{column}\" as text (Utf8), then restart the ingester: it resumes at this event"
                    ),
                })));
            }
        }
    }
    Ok(())
}

/// Whether a JSON value (exact decimal text, or a number) fits
/// `Decimal128(p, s)` without loss.
fn decimal_fits(v: &Value, p: u8, s: i8) -> std::result::Result<(), String> {
    let text = match v {
        Value::Null => return Ok(()),
        Value::String(t) => t.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(format!(
                "a non-numeric value cannot be stored as Decimal128({p}, {s})"
            ));
        }
    };
    let digits = text.trim_start_matches(['-', '+']);
    let lower = digits.to_ascii_lowercase();
    if lower == "nan" || lower.starts_with("inf") {
        return Err(format!(
            "a NaN or infinite numeric cannot be stored as Decimal128({p}, {s})"
        ));
    }
    if lower.contains('e') {
        // Exponent notation only comes from JSON numbers; let the decoder judge.
        return Ok(());
    }
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int_digits = int.trim_start_matches('0').len() as i32;
    let frac_digits = frac.trim_end_matches('0').len() as i32;
    if frac_digits > i32::from(s).max(0) {
        return Err(format!(
            "a value with {frac_digits} decimal places does not fit Decimal128({p}, {s})"
        ));
    }
    if int_digits > i32::from(p) - i32::from(s) {
        return Err(format!(
            "a value with {int_digits} integer digits does not fit Decimal128({p}, {s})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn decimal_values_that_do_not_fit_are_named_without_the_value() {
        assert!(decimal_fits(&json!("9.90"), 6, 2).is_ok());
        assert!(decimal_fits(&json!("-9999.99"), 6, 2).is_ok());
        assert!(decimal_fits(&json!("0009.900"), 6, 2).is_ok());
        assert!(decimal_fits(&Value::Null, 6, 2).is_ok());
        assert!(decimal_fits(&json!(12.5), 6, 2).is_ok());
        for bad in ["NaN", "Infinity", "-Infinity", "10000.00", "1.234"] {
            let e = decimal_fits(&json!(bad), 6, 2).unwrap_err();
            assert!(!e.contains(bad) || bad == "NaN", "{e}");
        }
    }
}
