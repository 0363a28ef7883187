//! Source column types and the conversion of PostgreSQL's text output into
//! typed JSON values.
//!
//! The snapshot (COPY text format) and the stream (pgoutput text tuples) both
//! hand over values in PostgreSQL's text form; both go through
//! [`PgType::text_to_json`], so a row reads the same whichever path it took.
//! Connections must use `DateStyle=ISO` and `TimeZone=UTC`.

use std::fmt;
use std::str::FromStr;

use chrono_free::parse_pg_timestamptz;
pub use chrono_free::{civil_from_days, days_from_civil, to_utc};

/// Formats microseconds since the Unix epoch as an RFC 3339 UTC timestamp
/// (`1970-01-01T00:00:00.000000Z`), the form timestamps take in events.
pub fn format_utc_micros(us: i64) -> String {
    chrono_free::format_micros(us)
}
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::{Error, Result};

/// A column type as the pipeline understands it. Types outside this list
/// travel as their text form ([`PgType::Other`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(p, s)`; `None` when declared without precision.
    Numeric(Option<(u8, i8)>),
    Text,
    Date,
    Timestamp,
    Timestamptz,
    Json,
    Uuid,
    /// Any other type, named by its PostgreSQL name; values stay text.
    Other(String),
}

impl PgType {
    /// Maps a built-in type OID and type modifier (as found in `pg_attribute`
    /// and pgoutput Relation messages) to a [`PgType`].
    pub fn from_oid(oid: u32, typmod: i32) -> PgType {
        match oid {
            16 => PgType::Bool,
            21 => PgType::Int2,
            23 => PgType::Int4,
            20 => PgType::Int8,
            700 => PgType::Float4,
            701 => PgType::Float8,
            1700 => {
                if typmod >= 4 {
                    let t = typmod - 4;
                    let precision = ((t >> 16) & 0xFFFF) as u8;
                    let scale = (t & 0xFFFF) as i16 as i8;
                    PgType::Numeric(Some((precision, scale)))
                } else {
                    PgType::Numeric(None)
                }
            }
            25 | 1043 | 1042 | 19 => PgType::Text,
            1082 => PgType::Date,
            1114 => PgType::Timestamp,
            1184 => PgType::Timestamptz,
            114 | 3802 => PgType::Json,
            2950 => PgType::Uuid,
            other => PgType::Other(format!("oid{other}")),
        }
    }

    /// Converts a value in PostgreSQL's text output form into its JSON form:
    /// integers, floats and booleans as JSON scalars, numerics as exact decimal
    /// strings, timestamps as RFC 3339 strings in UTC, dates as `YYYY-MM-DD`,
    /// json/jsonb embedded as JSON, everything else as the text itself.
    pub fn text_to_json(&self, column: &str, text: &str) -> Result<Value> {
        let bad = || Error::InvalidValue {
            column: column.to_string(),
            pg_type: self.to_string(),
            value: text.chars().take(64).collect(),
        };
        Ok(match self {
            PgType::Bool => match text {
                "t" | "true" => Value::Bool(true),
                "f" | "false" => Value::Bool(false),
                _ => return Err(bad()),
            },
            PgType::Int2 | PgType::Int4 | PgType::Int8 => {
                Value::from(text.parse::<i64>().map_err(|_| bad())?)
            }
            PgType::Float4 | PgType::Float8 => {
                let f: f64 = text.parse().map_err(|_| bad())?;
                // JSON has no NaN or infinity; keep their text.
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(text.to_string()))
            }
            PgType::Numeric(_) => {
                if text != "NaN" && text.parse::<f64>().is_err() {
                    return Err(bad());
                }
                Value::String(text.to_string())
            }
            PgType::Timestamptz => Value::String(parse_pg_timestamptz(text, true).ok_or_else(bad)?),
            PgType::Timestamp => Value::String(parse_pg_timestamptz(text, false).ok_or_else(bad)?),
            PgType::Date => {
                let ok = text.len() == 10
                    && text.as_bytes()[4] == b'-'
                    && text.as_bytes()[7] == b'-'
                    && text[..4].parse::<u16>().is_ok()
                    && text[5..7].parse::<u8>().is_ok()
                    && text[8..].parse::<u8>().is_ok();
                if !ok {
                    return Err(bad());
                }
                Value::String(text.to_string())
            }
            PgType::Json => serde_json::from_str(text).map_err(|_| bad())?,
            PgType::Text | PgType::Uuid | PgType::Other(_) => Value::String(text.to_string()),
        })
    }
}

impl fmt::Display for PgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgType::Bool => f.write_str("bool"),
            PgType::Int2 => f.write_str("int2"),
            PgType::Int4 => f.write_str("int4"),
            PgType::Int8 => f.write_str("int8"),
            PgType::Float4 => f.write_str("float4"),
            PgType::Float8 => f.write_str("float8"),
            PgType::Numeric(None) => f.write_str("numeric"),
            PgType::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            PgType::Text => f.write_str("text"),
            PgType::Date => f.write_str("date"),
            PgType::Timestamp => f.write_str("timestamp"),
            PgType::Timestamptz => f.write_str("timestamptz"),
            PgType::Json => f.write_str("json"),
            PgType::Uuid => f.write_str("uuid"),
            PgType::Other(name) => f.write_str(name),
        }
    }
}

impl FromStr for PgType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "bool" => PgType::Bool,
            "int2" => PgType::Int2,
            "int4" => PgType::Int4,
            "int8" => PgType::Int8,
            "float4" => PgType::Float4,
            "float8" => PgType::Float8,
            "numeric" => PgType::Numeric(None),
            "text" => PgType::Text,
            "date" => PgType::Date,
            "timestamp" => PgType::Timestamp,
            "timestamptz" => PgType::Timestamptz,
            "json" => PgType::Json,
            "uuid" => PgType::Uuid,
            other => {
                if let Some(args) = other
                    .strip_prefix("numeric(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    let bad = || Error::InvalidEvent(format!("bad numeric type {other:?}"));
                    let (p, s) = args.split_once(',').ok_or_else(bad)?;
                    PgType::Numeric(Some((
                        p.trim().parse().map_err(|_| bad())?,
                        s.trim().parse().map_err(|_| bad())?,
                    )))
                } else {
                    PgType::Other(other.to_string())
                }
            }
        })
    }
}

impl Serialize for PgType {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PgType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Timestamp parsing without a date library: PostgreSQL's ISO output is fixed.
mod chrono_free {
    /// Parses `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]]` into RFC 3339
    /// (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, normalised to UTC when `with_zone`).
    pub(super) fn parse_pg_timestamptz(text: &str, with_zone: bool) -> Option<String> {
        let b = text.as_bytes();
        if b.len() < 19 || b[10] != b' ' || b[4] != b'-' || b[13] != b':' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut rest = &text[19..];
        let mut micros = 0i64;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 6 {
                return None;
            }
            let padded = format!("{:0<6}", &frac[..digits]);
            micros = padded.parse().ok()?;
            rest = &frac[digits..];
        }
        let mut offset_secs = 0i64;
        if with_zone {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let zone = &rest[1..];
            let mut parts = zone.split(':');
            let h: i64 = parts.next()?.parse().ok()?;
            let m: i64 = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
            let s: i64 = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
            offset_secs = sign * (h * 3600 + m * 60 + s);
        } else if !rest.is_empty() {
            return None;
        }
        let ((y, m, d), secs) = to_utc((year, month, day), (hour, minute, second), offset_secs)?;
        Some(format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        ))
    }

    /// Formats microseconds since the Unix epoch as RFC 3339 in UTC.
    pub(super) fn format_micros(us: i64) -> String {
        let secs = us.div_euclid(1_000_000);
        let micros = us.rem_euclid(1_000_000);
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        )
    }

    /// A local date and time `offset_secs` east of UTC as the UTC date and
    /// the second of that day; `None` when a field is out of range.
    #[inline]
    pub fn to_utc(
        (year, month, day): (i64, i64, i64),
        (hour, minute, second): (i64, i64, i64),
        offset_secs: i64,
    ) -> Option<((i64, i64, i64), i64)> {
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let total = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
        let (days, secs) = (total.div_euclid(86_400), total.rem_euclid(86_400));
        Some((civil_from_days(days), secs))
    }

    // Howard Hinnant's civil-date algorithms.
    /// Days since 1970-01-01 of a proleptic Gregorian date.
    pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The proleptic Gregorian date (year, month, day) of days since 1970-01-01.
    pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_typmod_decodes_precision_and_scale() {
        // numeric(12,2): typmod = ((12 << 16) | 2) + 4.
        assert_eq!(
            PgType::from_oid(1700, ((12 << 16) | 2) + 4),
            PgType::Numeric(Some((12, 2)))
        );
        assert_eq!(PgType::from_oid(1700, -1), PgType::Numeric(None));
    }

    #[test]
    fn type_names_round_trip() {
        for t in [
            PgType::Int8,
            PgType::Numeric(Some((12, 2))),
            PgType::Numeric(None),
            PgType::Timestamptz,
            PgType::Other("oid600".into()),
        ] {
            assert_eq!(t.to_string().parse::<PgType>().unwrap(), t);
        }
    }

    #[test]
    fn converts_text_values() {
        let c = "c";
        assert_eq!(PgType::Int8.text_to_json(c, "-42").unwrap(), json!(-42));
        assert_eq!(PgType::Bool.text_to_json(c, "t").unwrap(), json!(true));
        assert_eq!(
            PgType::Numeric(Some((12, 2)))
                .text_to_json(c, "12.30")
                .unwrap(),
            json!("12.30")
        );
        assert_eq!(
            PgType::Timestamptz
                .text_to_json(c, "2026-11-26 07:01:02.5+00")
                .unwrap(),
            json!("2026-11-26T07:01:02.500000Z")
        );
        assert_eq!(
            PgType::Timestamptz
                .text_to_json(c, "2026-01-01 01:00:00+05:30")
                .unwrap(),
            json!("2025-12-31T19:30:00.000000Z")
        );
        assert_eq!(
            PgType::Json.text_to_json(c, r#"{"a": [1]}"#).unwrap(),
            json!({"a": [1]})
        );
    }

    #[test]
    fn formats_micros_as_rfc3339() {
        assert_eq!(format_utc_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_utc_micros(1_764_140_462_500_000),
            "2025-11-26T07:01:02.500000Z"
        );
        assert_eq!(format_utc_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn bad_values_name_the_column() {
        let err = PgType::Int4.text_to_json("quantity", "abc").unwrap_err();
        assert!(err.to_string().contains("quantity"), "{err}");
        assert!(PgType::Timestamptz.text_to_json("t", "yesterday").is_err());
        assert!(PgType::Date.text_to_json("d", "2026-1-1").is_err());
    }
}
