//! Arrow values as PostgreSQL values: the type of each column, and each
//! value in text or binary format; parameters back from the wire.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::{BufMut, BytesMut};
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::messages::data::DataRow;

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's binary epoch.
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400 * 1_000_000;

/// The PostgreSQL type a column of `data_type` is sent as. Types without a
/// close match (lists, structs, intervals) go as `text`, in Arrow's display.
pub(crate) fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 => Type::INT8,
        // Delta tables hold no unsigned types; the catalog's oids are u32.
        DataType::UInt32 => Type::OID,
        DataType::UInt64 | DataType::Decimal32(..) | DataType::Decimal64(..) => Type::NUMERIC,
        DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Dictionary(_, value) => pg_type(value),
        _ => Type::TEXT,
    }
}

/// The row description of a result: names, types and the format each
/// column is sent in.
pub(crate) fn fields(
    schema: &arrow::datatypes::Schema,
    format: impl Fn(usize) -> FieldFormat,
) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let ty = match f.metadata().get(super::pg_catalog::PG_TYPE_KEY) {
                Some(name) if name == "char" => Type::CHAR,
                _ => pg_type(f.data_type()),
            };
            // Only these are encoded in binary here; anything else is text.
            let fmt = match format(i) {
                FieldFormat::Binary if binary_supported(&ty) => FieldFormat::Binary,
                _ => FieldFormat::Text,
            };
            FieldInfo::new(f.name().clone(), None, None, ty.clone(), fmt)
                .with_type_size(typlen(&ty))
                .with_type_modifier(typmod(f.data_type()))
        })
        .collect()
}

/// `pg_type.typlen` of a type: its width in bytes, or -1 when variable.
pub(crate) fn typlen(ty: &Type) -> i16 {
    match *ty {
        Type::BOOL | Type::CHAR => 1,
        Type::INT2 => 2,
        Type::INT4
        | Type::OID
        | Type::FLOAT4
        | Type::DATE
        | Type::REGCLASS
        | Type::REGPROC
        | Type::REGTYPE => 4,
        Type::INT8 | Type::FLOAT8 | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIME => 8,
        Type::INTERVAL | Type::UUID => 16,
        Type::NAME => 64,
        _ => -1,
    }
}

/// `pg_attribute.atttypmod` of a column: precision and scale packed for
/// numeric (`((p << 16) | s) + 4`), -1 (none) otherwise.
pub(crate) fn typmod(data_type: &DataType) -> i32 {
    match data_type {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => ((*p as i32) << 16 | (*s as i32 & 0xffff)) + 4,
        DataType::Dictionary(_, value) => typmod(value),
        _ => -1,
    }
}

fn binary_supported(ty: &Type) -> bool {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::CHAR,
        Type::BYTEA,
        Type::DATE,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
    ]
    .contains(ty)
}

/// Encodes every row of `batch` as a `DataRow`.
pub(crate) fn rows(batch: &RecordBatch, fields: &[FieldInfo]) -> Result<Vec<DataRow>, String> {
    let options = FormatOptions::default().with_null("");
    let columns = plain_columns(batch)?;
    let formatters = formatters(&columns, &options)?;
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut buf = BytesMut::with_capacity(64 * columns.len());
    let mut scratch = BytesMut::new();
    for row in 0..batch.num_rows() {
        for (col, (array, field)) in columns.iter().zip(fields).enumerate() {
            if is_null(array, row) {
                buf.put_i32(-1);
                continue;
            }
            scratch.clear();
            match field.format() {
                FieldFormat::Binary => binary_value(array, row, field.datatype(), &mut scratch)?,
                FieldFormat::Text => text_value(array, &formatters[col], row, &mut scratch)?,
            }
            buf.put_i32(scratch.len() as i32);
            buf.put_slice(&scratch);
        }
        out.push(DataRow::new(buf.split(), columns.len() as i16));
    }
    Ok(out)
}

/// Whether a value is NULL, counting every value of a `Null` column (whose
/// arrays carry no validity buffer, so `Array::is_null` says false).
fn is_null(array: &ArrayRef, row: usize) -> bool {
    array.is_null(row) || *array.data_type() == DataType::Null
}

/// The batch's columns, dictionaries replaced by their values (they are
/// sent as the values).
fn plain_columns(batch: &RecordBatch) -> Result<Vec<ArrayRef>, String> {
    batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Dictionary(_, value) => {
                arrow::compute::cast(c, value).map_err(|e| e.to_string())
            }
            _ => Ok(c.clone()),
        })
        .collect()
}

fn formatters<'a>(
    columns: &'a [ArrayRef],
    options: &'a FormatOptions<'a>,
) -> Result<Vec<ArrayFormatter<'a>>, String> {
    columns
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), options).map_err(|e| e.to_string()))
        .collect()
}

/// How `COPY ... TO STDOUT` writes rows: PostgreSQL's text format (tab
/// separated, `\N` for null, backslash escapes) or CSV (quoted where
/// needed, empty for null).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CopyFormat {
    pub(crate) csv: bool,
    pub(crate) header: bool,
    pub(crate) delimiter: char,
    pub(crate) null: String,
    pub(crate) quote: char,
}

impl CopyFormat {
    pub(crate) fn text() -> Self {
        CopyFormat {
            csv: false,
            header: false,
            delimiter: '\t',
            null: "\\N".into(),
            quote: '"',
        }
    }

    pub(crate) fn csv() -> Self {
        CopyFormat {
            csv: true,
            delimiter: ',',
            null: String::new(),
            ..CopyFormat::text()
        }
    }

    /// One field, escaped or quoted for this format.
    fn field(&self, value: &str, out: &mut String) {
        if self.csv {
            // A value that reads as the null string is quoted, so it is
            // not taken for a null.
            let needs_quotes = value == self.null
                || value
                    .chars()
                    .any(|c| c == self.delimiter || c == self.quote || c == '\n' || c == '\r');
            if needs_quotes {
                out.push(self.quote);
                for c in value.chars() {
                    if c == self.quote {
                        out.push(self.quote);
                    }
                    out.push(c);
                }
                out.push(self.quote);
            } else {
                out.push_str(value);
            }
        } else {
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == self.delimiter => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
        }
    }

    /// The header line (CSV only): the column names.
    pub(crate) fn header_line(&self, names: &[&str]) -> Option<bytes::Bytes> {
        if !(self.csv && self.header) {
            return None;
        }
        let mut line = String::new();
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                line.push(self.delimiter);
            }
            self.field(name, &mut line);
        }
        line.push('\n');
        Some(line.into())
    }

    /// Every row of `batch` as one line of COPY data, values in
    /// PostgreSQL's text output.
    pub(crate) fn lines(&self, batch: &RecordBatch) -> Result<Vec<bytes::Bytes>, String> {
        let options = FormatOptions::default().with_null("");
        let columns = plain_columns(batch)?;
        let formatters = formatters(&columns, &options)?;
        let mut scratch = BytesMut::new();
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let mut line = String::new();
            for (col, array) in columns.iter().enumerate() {
                if col > 0 {
                    line.push(self.delimiter);
                }
                if is_null(array, row) {
                    line.push_str(&self.null);
                    continue;
                }
                scratch.clear();
                text_value(array, &formatters[col], row, &mut scratch)?;
                self.field(&String::from_utf8_lossy(&scratch), &mut line);
            }
            line.push('\n');
            out.push(line.into());
        }
        Ok(out)
    }
}

/// PostgreSQL's text output for one value.
fn text_value(
    array: &ArrayRef,
    formatter: &ArrayFormatter,
    row: usize,
    out: &mut BytesMut,
) -> Result<(), String> {
    use std::fmt::Write;
    let mut w = Writer(out);
    match array.data_type() {
        DataType::Boolean => {
            let v = array.as_boolean().value(row);
            w.0.put_slice(if v { b"t" } else { b"f" });
        }
        DataType::Float16 => float_text(
            array.as_primitive::<Float16Type>().value(row).to_f64(),
            &mut w,
        ),
        DataType::Float32 => float_text(
            array.as_primitive::<Float32Type>().value(row) as f64,
            &mut w,
        ),
        DataType::Float64 => float_text(array.as_primitive::<Float64Type>().value(row), &mut w),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => {
            let bytes = binary_bytes(array, row);
            w.0.put_slice(b"\\x");
            for b in bytes {
                write!(w, "{b:02x}").map_err(|e| e.to_string())?;
            }
        }
        DataType::Timestamp(unit, tz) => {
            let micros = timestamp_micros(array, row, unit);
            let (secs, sub) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
            let t = chrono::DateTime::from_timestamp(secs, (sub * 1000) as u32)
                .ok_or_else(|| format!("timestamp {micros} µs out of range"))?;
            let fraction = if sub == 0 { "" } else { ".%6f" };
            let text = t
                .format(&format!("%Y-%m-%d %H:%M:%S{fraction}"))
                .to_string();
            w.0.put_slice(text.trim_end_matches(|c| c == '0' && sub != 0).as_bytes());
            if tz.is_some() {
                w.0.put_slice(b"+00");
            }
        }
        _ => write!(w, "{}", formatter.value(row)).map_err(|e| e.to_string())?,
    }
    Ok(())
}

fn float_text(v: f64, w: &mut Writer<'_>) {
    use std::fmt::Write;
    let _infallible = if v.is_nan() {
        w.write_str("NaN")
    } else if v.is_infinite() {
        w.write_str(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        write!(w, "{v}")
    };
}

/// PostgreSQL's binary format for one value of a type in `binary_supported`.
fn binary_value(array: &ArrayRef, row: usize, ty: &Type, out: &mut BytesMut) -> Result<(), String> {
    match *ty {
        Type::BOOL => out.put_u8(array.as_boolean().value(row) as u8),
        Type::INT2 => out.put_i16(int_value(array, row)? as i16),
        Type::INT4 => out.put_i32(int_value(array, row)? as i32),
        Type::INT8 => out.put_i64(int_value(array, row)? as i64),
        Type::OID => out.put_u32(int_value(array, row)? as u32),
        Type::FLOAT4 => out.put_f32(match array.data_type() {
            DataType::Float16 => array.as_primitive::<Float16Type>().value(row).to_f32(),
            _ => array.as_primitive::<Float32Type>().value(row),
        }),
        Type::FLOAT8 => out.put_f64(array.as_primitive::<Float64Type>().value(row)),
        Type::BYTEA => out.put_slice(binary_bytes(array, row)),
        Type::DATE => {
            let days = match array.data_type() {
                DataType::Date32 => array.as_primitive::<Date32Type>().value(row) as i64,
                _ => array.as_primitive::<Date64Type>().value(row) / 86_400_000,
            };
            out.put_i32((days - PG_EPOCH_DAYS) as i32);
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let DataType::Timestamp(unit, _) = array.data_type() else {
                return Err(format!("{} is not a timestamp", array.data_type()));
            };
            out.put_i64(timestamp_micros(array, row, unit) - PG_EPOCH_MICROS);
        }
        Type::NUMERIC => {
            let options = FormatOptions::default();
            let text = ArrayFormatter::try_new(array.as_ref(), &options)
                .map_err(|e| e.to_string())?
                .value(row)
                .to_string();
            numeric_binary(&text, out)?;
        }
        // Text in binary format is its UTF-8 bytes.
        _ => {
            let options = FormatOptions::default();
            let text = ArrayFormatter::try_new(array.as_ref(), &options)
                .map_err(|e| e.to_string())?
                .value(row)
                .to_string();
            out.put_slice(text.as_bytes());
        }
    }
    Ok(())
}

fn int_value(array: &ArrayRef, row: usize) -> Result<i128, String> {
    Ok(match array.data_type() {
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row) as i128,
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row) as i128,
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row) as i128,
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row) as i128,
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row) as i128,
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row) as i128,
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row) as i128,
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row) as i128,
        other => return Err(format!("{other} is not an integer type")),
    })
}

fn binary_bytes(array: &ArrayRef, row: usize) -> &[u8] {
    match array.data_type() {
        DataType::Binary => array.as_binary::<i32>().value(row),
        DataType::LargeBinary => array.as_binary::<i64>().value(row),
        DataType::BinaryView => array.as_binary_view().value(row),
        _ => array.as_fixed_size_binary().value(row),
    }
}

fn timestamp_micros(array: &ArrayRef, row: usize, unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row) * 1_000_000,
        TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row) * 1000,
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row) / 1000,
    }
}

/// PostgreSQL's binary `numeric`: base-10000 digits with a weight, sign and
/// display scale, from a decimal's text (`-12.3400`).
pub(crate) fn numeric_binary(text: &str, out: &mut BytesMut) -> Result<(), String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(format!("{text:?} is not a decimal number"));
    }
    let dscale = frac_part.len() as u16;
    // Pad the integer part on the left and the fraction on the right to
    // whole groups of four digits.
    let int_pad = (4 - int_part.len() % 4) % 4;
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let int_digits = format!("{}{}", "0".repeat(int_pad), int_part);
    let frac_digits = format!("{}{}", frac_part, "0".repeat(frac_pad));
    let group = |s: &str| -> Vec<i16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + (d - b'0') as i16))
            .collect()
    };
    let mut groups = group(&int_digits);
    let mut weight = groups.len() as i16 - 1;
    groups.extend(group(&frac_digits));
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight);
    out.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_u16(dscale);
    for g in groups {
        out.put_i16(g);
    }
    Ok(())
}

/// The Arrow type a parameter declared by the client as `ty` is read into.
pub(crate) fn arrow_type(ty: &Type) -> Option<DataType> {
    Some(match *ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::OID => DataType::UInt32,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => return None,
    })
}

/// Reads one bound parameter. `declared` is the type the client named (or
/// none); `wanted` the type the plan expects there (or none).
pub(crate) fn parameter(
    value: Option<&[u8]>,
    binary: bool,
    declared: Option<&Type>,
    wanted: Option<&DataType>,
) -> Result<ScalarValue, String> {
    let target = wanted.cloned().unwrap_or(DataType::Utf8);
    let Some(bytes) = value else {
        return ScalarValue::try_from(&target).map_err(|e| e.to_string());
    };
    let read = if binary {
        let ty = declared.ok_or("a binary parameter needs a declared type")?;
        binary_parameter(bytes, ty)?
    } else {
        let text = std::str::from_utf8(bytes).map_err(|_| "parameter is not UTF-8".to_string())?;
        match declared.and_then(arrow_type) {
            Some(DataType::Boolean) => ScalarValue::Boolean(Some(matches!(
                text.trim().to_ascii_lowercase().as_str(),
                "t" | "true" | "y" | "yes" | "on" | "1"
            ))),
            _ => ScalarValue::Utf8(Some(text.to_string())),
        }
    };
    if read.data_type() == target {
        return Ok(read);
    }
    read.cast_to(&target)
        .map_err(|e| format!("cannot read {read} as {target}: {e}"))
}

fn binary_parameter(bytes: &[u8], ty: &Type) -> Result<ScalarValue, String> {
    let fixed = |n: usize| -> Result<&[u8], String> {
        (bytes.len() == n)
            .then_some(bytes)
            .ok_or_else(|| format!("{} parameter of {} bytes", ty.name(), bytes.len()))
    };
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(fixed(1)?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(
            fixed(2)?.try_into().unwrap_or_default(),
        ))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(
            fixed(4)?.try_into().unwrap_or_default(),
        ))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(
            fixed(8)?.try_into().unwrap_or_default(),
        ))),
        Type::OID => ScalarValue::UInt32(Some(u32::from_be_bytes(
            fixed(4)?.try_into().unwrap_or_default(),
        ))),
        Type::NUMERIC => ScalarValue::Utf8(Some(numeric_from_binary(bytes)?)),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(
            fixed(4)?.try_into().unwrap_or_default(),
        ))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(
            fixed(8)?.try_into().unwrap_or_default(),
        ))),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            ScalarValue::Utf8(Some(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| "parameter is not UTF-8".to_string())?,
            ))
        }
        Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
        Type::DATE => {
            let days = i32::from_be_bytes(fixed(4)?.try_into().unwrap_or_default());
            ScalarValue::Date32(Some(days + PG_EPOCH_DAYS as i32))
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros =
                i64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default()) + PG_EPOCH_MICROS;
            let tz: Option<Arc<str>> = (*ty == Type::TIMESTAMPTZ).then(|| "UTC".into());
            ScalarValue::TimestampMicrosecond(Some(micros), tz)
        }
        _ => {
            return Err(format!(
                "binary parameters of type {} are not supported; send text",
                ty.name()
            ));
        }
    })
}

/// A binary numeric (base-10000 digits) as decimal text, which the caller
/// casts to the type the plan wants.
fn numeric_from_binary(bytes: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<i16, String> {
        bytes
            .get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("numeric parameter of {} bytes is cut short", bytes.len()))
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(1)?, word(2)? as u16, word(3)?);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0x0000 | 0x4000 => {}
        other => return Err(format!("numeric parameter with sign word {other:#x}")),
    }
    let digits: Vec<i16> = (0..ndigits as usize)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let mut int_part = String::new();
    for k in 0..=weight.max(-1) {
        let d = digits.get(k as usize).copied().unwrap_or(0);
        if int_part.is_empty() {
            if d != 0 || k == weight {
                int_part = d.to_string();
            }
        } else {
            int_part.push_str(&format!("{d:04}"));
        }
    }
    if int_part.is_empty() {
        int_part.push('0');
    }
    let mut fraction = String::new();
    let mut k = weight as i32 + 1;
    while (fraction.len() as i32) < dscale as i32 {
        let d = if k < 0 {
            0
        } else {
            digits.get(k as usize).copied().unwrap_or(0)
        };
        fraction.push_str(&format!("{d:04}"));
        k += 1;
    }
    fraction.truncate(dscale.max(0) as usize);
    let sign = if sign == 0x4000 { "-" } else { "" };
    Ok(if fraction.is_empty() {
        format!("{sign}{int_part}")
    } else {
        format!("{sign}{int_part}.{fraction}")
    })
}

/// `fmt::Write` over a byte buffer.
struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(text: &str) -> Vec<i16> {
        let mut out = BytesMut::new();
        numeric_binary(text, &mut out).unwrap();
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numerics_encode_in_base_10000() {
        // ndigits, weight, sign, dscale, digits...
        assert_eq!(numeric("10.50"), vec![2, 0, 0, 2, 10, 5000]);
        assert_eq!(numeric("-12345.6"), vec![3, 1, 0x4000, 1, 1, 2345, 6000]);
        assert_eq!(numeric("0.0001"), vec![1, -1, 0, 4, 1]);
        assert_eq!(numeric("0.00"), vec![0, 0, 0, 2]);
        assert_eq!(numeric("10000"), vec![1, 1, 0, 0, 1]);
        let mut out = BytesMut::new();
        assert!(numeric_binary("1e5", &mut out).is_err());
    }

    #[test]
    fn binary_numerics_read_back_as_written() {
        for text in [
            "10.50",
            "0.01",
            "-12345.6789",
            "100000",
            "0",
            "0.00012",
            "99999999.99",
        ] {
            let mut out = BytesMut::new();
            numeric_binary(text, &mut out).unwrap();
            assert_eq!(numeric_from_binary(&out).unwrap(), text, "{text}");
        }
        assert!(numeric_from_binary(&[0, 2, 0]).is_err());
    }

    #[test]
    fn types_map_to_postgres() {
        assert_eq!(pg_type(&DataType::Int64), Type::INT8);
        assert_eq!(pg_type(&DataType::Decimal128(12, 2)), Type::NUMERIC);
        assert_eq!(
            pg_type(&DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            )),
            Type::TIMESTAMPTZ
        );
        assert_eq!(pg_type(&DataType::Utf8View), Type::TEXT);
        assert_eq!(pg_type(&DataType::Date32), Type::DATE);
    }

    #[test]
    fn text_parameters_take_the_planned_type() {
        let v = parameter(Some(b"42"), false, None, Some(&DataType::Int64)).unwrap();
        assert_eq!(v, ScalarValue::Int64(Some(42)));
        let v = parameter(Some(b"x"), false, None, None).unwrap();
        assert_eq!(v, ScalarValue::Utf8(Some("x".into())));
        let v = parameter(None, false, None, Some(&DataType::Int32)).unwrap();
        assert_eq!(v, ScalarValue::Int32(None));
        let v = parameter(
            Some(&7i32.to_be_bytes()),
            true,
            Some(&Type::INT4),
            Some(&DataType::Int64),
        )
        .unwrap();
        assert_eq!(v, ScalarValue::Int64(Some(7)));
        assert!(parameter(Some(b"abc"), false, None, Some(&DataType::Int64)).is_err());
    }
}
