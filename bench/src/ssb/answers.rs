//! Query answers in a form every engine can produce, and their comparison.
//!
//! Each engine returns rows of text cells (`None` for NULL). Rows are
//! compared as sorted multisets, because `order by revenue desc` leaves ties
//! in any order; numbers compare by value (`12` equals `12.0`), integers
//! exactly and floats within a relative tolerance.

use arrow::array::Array;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::Result;

/// One result: rows of cells, `None` for NULL.
pub type Rows = Vec<Vec<Option<String>>>;

/// Relative tolerance for floating point cells.
const TOLERANCE: f64 = 1e-9;

/// Arrow batches as text rows.
pub(crate) fn from_batches(batches: &[RecordBatch]) -> Result<Rows> {
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..batch.num_rows() {
            let row = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(c, f)| (!c.is_null(i)).then(|| f.value(i).to_string()))
                .collect();
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A cell as a number when it is one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Number {
    Int(i128),
    Float(f64),
}

fn number(cell: &str) -> Option<Number> {
    let cell = cell.trim();
    if let Ok(i) = cell.parse::<i128>() {
        return Some(Number::Int(i));
    }
    // A decimal with only zeros after the point is an integer (`12.00`).
    if let Some((int, frac)) = cell.split_once('.')
        && !frac.is_empty()
        && frac.bytes().all(|b| b == b'0')
        && let Ok(i) = int.parse::<i128>()
    {
        return Some(Number::Int(i));
    }
    cell.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Number::Float)
}

/// A sort key that puts equal values of different spellings together.
fn sort_key(cell: &Option<String>) -> String {
    match cell.as_deref() {
        None => "\u{0}".into(),
        Some(text) => match number(text) {
            Some(Number::Int(i)) => format!("n{i}"),
            Some(Number::Float(f)) => format!("n{f:.6e}"),
            None => format!("s{text}"),
        },
    }
}

fn cells_equal(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => match (number(a), number(b)) {
            (Some(Number::Int(x)), Some(Number::Int(y))) => x == y,
            (Some(x), Some(y)) => {
                let f = |n| match n {
                    Number::Int(i) => i as f64,
                    Number::Float(f) => f,
                };
                let (x, y) = (f(x), f(y));
                (x - y).abs() <= TOLERANCE * x.abs().max(y.abs()).max(1.0)
            }
            _ => a.trim() == b.trim(),
        },
        _ => false,
    }
}

fn sorted(rows: &Rows) -> Vec<&Vec<Option<String>>> {
    let mut keyed: Vec<(Vec<String>, &Vec<Option<String>>)> = rows
        .iter()
        .map(|r| (r.iter().map(sort_key).collect(), r))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, r)| r).collect()
}

fn show(row: &[Option<String>]) -> String {
    let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
    format!("({})", cells.join(", "))
}

/// `Ok` when both results hold the same rows; otherwise the first difference.
pub fn compare(expected: &Rows, actual: &Rows) -> Result<(), String> {
    if expected.len() != actual.len() {
        return Err(format!(
            "{} rows where {} were expected",
            actual.len(),
            expected.len()
        ));
    }
    for (e, a) in sorted(expected).into_iter().zip(sorted(actual)) {
        let same = e.len() == a.len() && e.iter().zip(a).all(|(x, y)| cells_equal(x, y));
        if !same {
            return Err(format!("row {} where {} was expected", show(a), show(e)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(cells: &[&[Option<&str>]]) -> Rows {
        cells
            .iter()
            .map(|r| r.iter().map(|c| c.map(str::to_string)).collect())
            .collect()
    }

    #[test]
    fn same_rows_in_any_order_and_spelling() {
        let a = rows(&[&[Some("1993"), Some("10")], &[Some("1992"), Some("5")]]);
        let b = rows(&[&[Some("1992"), Some("5.00")], &[Some("1993"), Some("10")]]);
        assert_eq!(compare(&a, &b), Ok(()));
    }

    #[test]
    fn floats_within_tolerance() {
        let a = rows(&[&[Some("0.1"), None]]);
        let b = rows(&[&[Some("0.10000000000000002"), None]]);
        assert_eq!(compare(&a, &b), Ok(()));
        let c = rows(&[&[Some("0.11"), None]]);
        assert!(compare(&a, &c).is_err());
    }

    #[test]
    fn differences_are_named() {
        let a = rows(&[&[Some("ASIA"), Some("7")]]);
        let b = rows(&[&[Some("ASIA"), Some("8")]]);
        let err = compare(&a, &b).unwrap_err();
        assert!(
            err.contains("(ASIA, 8)") && err.contains("(ASIA, 7)"),
            "{err}"
        );
        assert!(compare(&a, &rows(&[])).unwrap_err().contains("0 rows"));
        assert!(compare(&a, &rows(&[&[Some("ASIA"), None]])).is_err());
    }
}
