//! Money as integer cents, so that totals are exact.
//!
//! The databases store `numeric(12,2)`; SQL converts with `(x * 100)::bigint`
//! on the way out and `$n::bigint::numeric / 100` on the way in, so no float
//! ever reaches a stored amount.

use crate::error::{Error, Result};

/// The largest amount `numeric(12,2)` holds, in cents.
pub(crate) const MAX_CENTS: i64 = 999_999_999_999;

/// Parses a JSON number with at most two decimals into cents.
pub(crate) fn cents_from_json(field: &str, value: f64) -> Result<i64> {
    if !value.is_finite() {
        return Err(Error::bad(field, "must be a finite number"));
    }
    let scaled = value * 100.0;
    let cents = scaled.round();
    // Tolerate binary noise such as 19.99 * 100 = 1998.9999999999998.
    if (scaled - cents).abs() > 1e-6 * cents.abs().max(1.0) {
        return Err(Error::bad(field, "must have at most two decimals"));
    }
    if cents < 0.0 {
        return Err(Error::bad(field, "must not be negative"));
    }
    if cents > MAX_CENTS as f64 {
        return Err(Error::bad(field, "is too large"));
    }
    Ok(cents as i64)
}

/// Cents as a JSON number; two-decimal values print exactly (`19.99`).
pub(crate) fn cents_to_json(cents: i64) -> serde_json::Value {
    serde_json::Value::from(cents as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_two_decimals() {
        assert_eq!(cents_from_json("price", 19.99).unwrap(), 1999);
        assert_eq!(cents_from_json("price", 0.0).unwrap(), 0);
        assert_eq!(cents_from_json("price", 1234567.1).unwrap(), 123456710);
        assert_eq!(cents_to_json(1999).to_string(), "19.99");
        assert_eq!(cents_to_json(5).to_string(), "0.05");
    }

    #[test]
    fn rejects_bad_amounts_naming_the_field() {
        for bad in [-1.0, 1.005, f64::NAN, 1e13] {
            match cents_from_json("price", bad).unwrap_err() {
                Error::BadRequest { field, .. } => assert_eq!(field, "price"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
