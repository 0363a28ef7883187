//! Durations written as text in configuration and job files: `500ms`,
//! `90s`, `10m`, `2h`, `1d` (a whole number and a unit).

use std::time::Duration;

/// The duration of `s` in microseconds; `None` for anything else (no unit,
/// a fraction, a negative number, an overflow).
pub fn parse_us(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let unit_us: i64 = match unit {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(unit_us)
}

/// [`parse_us`] as a [`Duration`].
pub fn parse(s: &str) -> Option<Duration> {
    parse_us(s).map(|us| Duration::from_micros(us as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_refusals() {
        assert_eq!(parse_us("500ms"), Some(500_000));
        assert_eq!(parse("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_us("1d"), Some(86_400_000_000));
        for bad in ["", "10", "1.5s", "-1s", "5 minutes", "s"] {
            assert_eq!(parse_us(bad), None, "{bad:?}");
        }
    }
}
