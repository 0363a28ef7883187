//! Reading Prometheus text (format 0.0.4), as a process's `/metrics` serves
//! it: samples by name and labels, and histograms. Tolerant of what differs
//! between encoders: label order, extra labels, `le="1"` or `le="1.0"`,
//! integer or float values, comments.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// One sample line: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// Every sample of metric `name` (exactly that name, any labels).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| parse_line(l.trim()))
        .filter(|(n, _)| n == name)
        .map(|(_, s)| s)
        .collect()
}

/// The sum of `name`'s samples whose labels include every `(label, value)`
/// of `with`; 0 when there is none.
pub fn sum(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .iter()
        .filter(|s| with.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<(String, Sample)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.to_string(), Sample { labels, value }))
}

/// `a="x",b="y"}` → the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

/// A histogram summed over all its label sets: cumulative buckets `(upper
/// bound, count)` in ascending order with +Inf as `f64::INFINITY`, and the
/// sum and count of its observations.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Histogram `name` in `text`; an error when it has no bucket.
    pub fn parse(text: &str, name: &str) -> Result<Histogram> {
        let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
        for s in samples(text, &format!("{name}_bucket")) {
            let le = s.label("le").ok_or_else(|| {
                Error::Run(format!("a bucket of {name} without an `le` label: {s:?}"))
            })?;
            let bound = match le {
                "+Inf" => f64::INFINITY,
                v => v.parse::<f64>().map_err(|_| {
                    Error::Run(format!("a bucket of {name} with a bad bound le={v:?}"))
                })?,
            };
            // Keyed by the bound's bits: `1` and `1.0` are one bucket.
            buckets.entry(bound.to_bits()).or_insert((bound, 0)).1 += s.value as u64;
        }
        if buckets.is_empty() {
            return Err(Error::Run(format!("no {name} histogram in the metrics")));
        }
        let mut buckets: Vec<(f64, u64)> = buckets.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Histogram {
            buckets,
            sum: sum(text, &format!("{name}_sum"), &[]),
            count: sum(text, &format!("{name}_count"), &[]) as u64,
        })
    }

    /// The observations made between `earlier` and `self` (two scrapes of
    /// one process).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0, |(_, n)| *n);
                (*le, n.saturating_sub(before))
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The observations in all buckets (the +Inf bucket's count).
    pub fn total(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, n)| *n)
    }

    /// The bucket `(lower, upper]` that holds the `q` quantile (0 < q <= 1):
    /// at least a fraction `q` of the observations are at most `upper`, and
    /// fewer than `q` are at most `lower`. `None` without observations.
    pub fn quantile_bucket(&self, q: f64) -> Option<(f64, f64)> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower = 0.0;
        for (le, n) in &self.buckets {
            if *n as f64 >= rank {
                return Some((lower, *le));
            }
            lower = *le;
        }
        Some((lower, f64::INFINITY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_whatever_the_label_order_and_number_format() {
        let text = "# HELP x_total Things.\n# TYPE x_total counter\n\
                    x_total{table=\"orders\",layer=\"silver\"} 3\n\
                    x_total{layer=\"bronze\",table=\"orders\"} 4.5\n\
                    x_total{table=\"items\"} 1e3\n\
                    x_total_other 9\n\
                    y 2 1700000000000\n";
        assert_eq!(sum(text, "x_total", &[("table", "orders")]), 7.5);
        assert_eq!(sum(text, "x_total", &[]), 1007.5);
        assert_eq!(sum(text, "x_total", &[("table", "none")]), 0.0);
        assert_eq!(sum(text, "y", &[]), 2.0);
        let s = &samples("z{a=\"q\\\"uote\",b=\"x,y}\"} 1\n", "z")[0];
        assert_eq!(s.label("a"), Some("q\"uote"));
        assert_eq!(s.label("b"), Some("x,y}"));
    }

    #[test]
    fn histograms_parse_from_either_encoder() {
        // The hand-written encoder's `le="1.0"`-style bounds and the
        // prometheus crate's `le="1"`, with and without other labels.
        let hand = "h_bucket{le=\"0.5\"} 3\nh_bucket{le=\"1.0\"} 5\nh_bucket{le=\"+Inf\"} 6\nh_sum 4.5\nh_count 6\n";
        let crate_text = "h_bucket{le=\"0.5\"} 3\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 6\nh_sum 4.5\nh_count 6\n";
        let labelled = "h_bucket{table=\"a\",le=\"0.5\"} 1\nh_bucket{table=\"a\",le=\"1\"} 2\n\
                        h_bucket{table=\"a\",le=\"+Inf\"} 2\nh_bucket{le=\"0.5\",table=\"b\"} 2\n\
                        h_bucket{le=\"1\",table=\"b\"} 3\nh_bucket{le=\"+Inf\",table=\"b\"} 4\n\
                        h_sum{table=\"a\"} 1.5\nh_sum{table=\"b\"} 3\nh_count{table=\"a\"} 2\nh_count{table=\"b\"} 4\n";
        let want = Histogram {
            buckets: vec![(0.5, 3), (1.0, 5), (f64::INFINITY, 6)],
            sum: 4.5,
            count: 6,
        };
        for text in [hand, crate_text, labelled] {
            assert_eq!(Histogram::parse(text, "h").unwrap(), want, "{text}");
        }
        assert!(Histogram::parse("other 1\n", "h").is_err());
    }

    #[test]
    fn quantiles_name_their_bucket() {
        let start = Histogram {
            buckets: vec![(0.5, 10), (1.0, 10), (2.0, 10), (f64::INFINITY, 10)],
            sum: 2.0,
            count: 10,
        };
        let end = Histogram {
            buckets: vec![(0.5, 60), (1.0, 100), (2.0, 109), (f64::INFINITY, 110)],
            sum: 82.0,
            count: 110,
        };
        let h = end.since(&start);
        assert_eq!(h.total(), 100);
        assert_eq!(h.count, 100);
        assert_eq!(h.sum, 80.0);
        assert_eq!(h.quantile_bucket(0.5), Some((0.0, 0.5)));
        assert_eq!(h.quantile_bucket(0.51), Some((0.5, 1.0)));
        assert_eq!(h.quantile_bucket(0.95), Some((1.0, 2.0)));
        assert_eq!(h.quantile_bucket(0.99), Some((1.0, 2.0)));
        assert_eq!(h.quantile_bucket(1.0), Some((2.0, f64::INFINITY)));
        let empty = start.since(&start);
        assert_eq!(empty.quantile_bucket(0.99), None);
    }
}
