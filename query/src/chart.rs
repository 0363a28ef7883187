//! Quick terminal charts of a two-column result (`\chart` in the console):
//! the first column labels the points, the second is the number plotted.

use arrow::array::Array;
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::{Error, Result};

/// Bars (one line per row) or a line over the rows in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bar,
    Line,
}

/// Bars longer than this many characters are scaled down.
const BAR_WIDTH: usize = 50;
/// Height of a line chart in rows of characters.
const LINE_HEIGHT: usize = 12;
/// Rows plotted at most; more are summarised as "first N of M".
const MAX_POINTS: usize = 200;

/// Renders the chart as text (ending with a newline).
pub fn render(schema: &SchemaRef, batches: &[RecordBatch], kind: Kind) -> Result<String> {
    if schema.fields().len() != 2 {
        return Err(Error::Config(format!(
            "\\chart needs a result of two columns (label, number); the last one had {}",
            schema.fields().len()
        )));
    }
    let value_field = schema.field(1);
    if !value_field.data_type().is_numeric() {
        return Err(Error::Config(format!(
            "\\chart plots the second column, but {} is {}, not a number",
            value_field.name(),
            value_field.data_type()
        )));
    }
    let points = points(batches)?;
    if points.is_empty() {
        return Ok("(no rows to chart)\n".into());
    }
    let total = points.len();
    let shown = &points[..total.min(MAX_POINTS)];
    let mut out = match kind {
        Kind::Bar => bars(shown),
        Kind::Line => line(shown),
    };
    if total > shown.len() {
        out.push_str(&format!("(first {} of {} rows)\n", shown.len(), total));
    }
    Ok(out)
}

/// (label, value) per row; rows whose value is null are skipped.
fn points(batches: &[RecordBatch]) -> Result<Vec<(String, f64)>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let render_err = |source| Error::Render {
            format: "chart",
            source,
        };
        let labels =
            ArrayFormatter::try_new(batch.column(0).as_ref(), &options).map_err(render_err)?;
        let values = cast(batch.column(1), &DataType::Float64).map_err(render_err)?;
        let values = values
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .ok_or_else(|| Error::Config("chart values are not numbers".into()))?;
        for row in 0..batch.num_rows() {
            if values.is_valid(row) {
                out.push((labels.value(row).to_string(), values.value(row)));
            }
        }
    }
    Ok(out)
}

fn bars(points: &[(String, f64)]) -> String {
    let label_width = points
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        .min(24);
    let max = points.iter().map(|(_, v)| v.abs()).fold(0.0, f64::max);
    let mut out = String::new();
    for (label, value) in points {
        let len = if max > 0.0 {
            ((value.abs() / max) * BAR_WIDTH as f64).round() as usize
        } else {
            0
        };
        let bar: String = if *value < 0.0 { "░" } else { "█" }.repeat(len);
        let label: String = label.chars().take(label_width).collect();
        out.push_str(&format!(
            "{label:<label_width$} │{bar} {}\n",
            number(*value)
        ));
    }
    out
}

fn line(points: &[(String, f64)]) -> String {
    let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let span = if max > min { max - min } else { 1.0 };
    let width = points.len();
    let mut grid = vec![vec![' '; width]; LINE_HEIGHT];
    for (x, (_, v)) in points.iter().enumerate() {
        let y = (((v - min) / span) * (LINE_HEIGHT - 1) as f64).round() as usize;
        grid[LINE_HEIGHT - 1 - y.min(LINE_HEIGHT - 1)][x] = '•';
    }
    let top = number(max);
    let bottom = number(min);
    let axis = top.len().max(bottom.len());
    let mut out = String::new();
    for (i, row) in grid.iter().enumerate() {
        let label = match i {
            0 => top.as_str(),
            i if i == LINE_HEIGHT - 1 => bottom.as_str(),
            _ => "",
        };
        let row: String = row.iter().collect();
        out.push_str(&format!("{label:>axis$} ┤{}\n", row.trim_end()));
    }
    out.push_str(&format!("{:>axis$} └{}\n", "", "─".repeat(width)));
    let first = &points[0].0;
    let last = &points[points.len() - 1].0;
    out.push_str(&format!("{:>axis$}  {first} … {last}\n", ""));
    out
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn result(labels: &[&str], values: &[Option<i64>]) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Utf8, false),
            Field::new("revenue", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(labels.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap();
        (schema, vec![batch])
    }

    #[test]
    fn bars_scale_to_the_largest_value() {
        let (schema, batches) = result(&["mon", "tue", "wed"], &[Some(50), Some(100), None]);
        let text = render(&schema, &batches, Kind::Bar).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0].matches('█').count(), BAR_WIDTH / 2, "{text}");
        assert_eq!(lines[1].matches('█').count(), BAR_WIDTH, "{text}");
        assert!(
            lines[1].starts_with("tue") && lines[1].ends_with(" 100"),
            "{text}"
        );
    }

    #[test]
    fn line_puts_the_maximum_on_top() {
        let (schema, batches) = result(&["a", "b", "c"], &[Some(1), Some(3), Some(2)]);
        let text = render(&schema, &batches, Kind::Line).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("3 ┤ •"), "{text}");
        assert!(lines[LINE_HEIGHT - 1].starts_with("1 ┤•"), "{text}");
        assert!(text.contains("a … c"), "{text}");
    }

    #[test]
    fn wrong_shapes_are_explained() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, false)]));
        let err = render(&schema, &[], Kind::Bar).unwrap_err().to_string();
        assert!(err.contains("two columns"), "{err}");
        let (schema, _) = result(&[], &[]);
        let swapped = Arc::new(Schema::new(vec![
            schema.field(1).clone(),
            schema.field(0).clone(),
        ]));
        let err = render(&swapped, &[], Kind::Line).unwrap_err().to_string();
        assert!(err.contains("not a number"), "{err}");
    }
}
