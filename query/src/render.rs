//! Writing query results for people (table) and programs (CSV, JSON lines).

use std::io::Write;
use std::str::FromStr;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::{Error, Result};

/// How results are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table (arrow's pretty printer).
    #[default]
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// JSON lines: one object per row; nulls are written as `null`.
    Json,
    /// A Parquet file (binary: for `--output` or `\o`, not a terminal).
    Parquet,
}

impl Format {
    /// The format a file name asks for by its extension, if any.
    pub fn from_extension(path: &std::path::Path) -> Option<Format> {
        path.extension()?.to_str()?.parse().ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Parquet => "parquet",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "parquet" => Ok(Format::Parquet),
            _ => Err(Error::UnknownFormat(s.to_string())),
        }
    }
}

/// Writes one result in `format`. The schema is used when there are no rows,
/// so an empty result still shows its columns (table, CSV header).
pub fn render(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
    out: &mut impl Write,
) -> Result<()> {
    let arrow_err = |source| Error::Render {
        format: format.name(),
        source,
    };
    match format {
        Format::Table => {
            let text =
                arrow::util::pretty::pretty_format_batches_with_schema(schema.clone(), batches)
                    .map_err(arrow_err)?;
            writeln!(out, "{text}")?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                // The CSV writer emits its header on the first batch only.
                writer
                    .write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(arrow_err)?;
            }
            for batch in batches {
                writer.write(batch).map_err(arrow_err)?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(&mut *out);
            for batch in batches {
                writer.write(batch).map_err(arrow_err)?;
            }
            writer.finish().map_err(arrow_err)?;
        }
        Format::Parquet => {
            let mut writer =
                datafusion::parquet::arrow::ArrowWriter::try_new(Vec::new(), schema.clone(), None)
                    .map_err(|e| arrow_err(e.into()))?;
            for batch in batches {
                writer.write(batch).map_err(|e| arrow_err(e.into()))?;
            }
            let bytes = writer.into_inner().map_err(|e| arrow_err(e.into()))?;
            out.write_all(&bytes)?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn sample() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a,b"), None])),
            ],
        )
        .unwrap();
        (schema, vec![batch])
    }

    fn to_string(schema: &SchemaRef, batches: &[RecordBatch], format: Format) -> String {
        let mut out = Vec::new();
        render(schema, batches, format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// [`sample`] rendered as `format`.
    fn sample_as(format: Format) -> String {
        let (schema, batches) = sample();
        to_string(&schema, &batches, format)
    }

    #[test]
    fn format_parses_and_names_the_choices() {
        assert_eq!("CSV".parse::<Format>().unwrap(), Format::Csv);
        assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
        let err = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("table, csv, json, parquet"), "{err}");
        assert_eq!(
            Format::from_extension(std::path::Path::new("out/x.parquet")),
            Some(Format::Parquet)
        );
    }

    #[test]
    fn csv_quotes_and_has_a_header() {
        assert_eq!(sample_as(Format::Csv), "id,name\n1,\"a,b\"\n2,\n");
    }

    #[test]
    fn json_lines_keep_nulls() {
        assert_eq!(
            sample_as(Format::Json),
            "{\"id\":1,\"name\":\"a,b\"}\n{\"id\":2,\"name\":null}\n"
        );
    }

    #[test]
    fn empty_results_still_show_columns() {
        let (schema, _) = sample();
        assert_eq!(to_string(&schema, &[], Format::Csv), "id,name\n");
        let table = to_string(&schema, &[], Format::Table);
        assert!(table.contains("| id | name |"), "{table}");
        assert_eq!(to_string(&schema, &[], Format::Json), "");
    }

    #[test]
    fn table_aligns_values() {
        let table = sample_as(Format::Table);
        assert!(table.contains("| 1  | a,b  |"), "{table}");
    }
}
