//! Every table the pipeline writes opens unchanged in other Delta readers:
//! the Python `deltalake` package reads it into Arrow (queried in DuckDB),
//! and DuckDB reads the current version's Parquet files itself, as the Delta
//! log lists them; both agree with DataFusion (through
//! `tributary_query::Session`) on the Delta version, the row count and the
//! contents of every column.
//!
//! The Python side is `interop.py` beside this file; both sides render values to text
//! by the same rules (see [`canon`]) and compare order-independent digests.
//! `TRIBUTARY_INTEROP_KEEP=<dir>` keeps a copy of the lake for a look after.

use std::collections::BTreeMap;
use std::process::Command;

use arrow::array::Array;
use arrow::datatypes::{DataType, TimeUnit};
use serde_json::Value;
use tributary_model::domain::LAYERS;
use tributary_model::error_chain;

use crate::common::*;

/// What one engine says about one table.
#[derive(Debug, Default, PartialEq)]
struct TableFacts {
    version: Option<i64>,
    rows: i64,
    row_fingerprint: Option<String>,
    columns: BTreeMap<String, ColumnFacts>,
}

/// What one engine says about one column; values as canonical text.
#[derive(Debug, Default, PartialEq)]
struct ColumnFacts {
    kind: String,
    count: Option<String>,
    distinct: Option<String>,
    min: Option<String>,
    max: Option<String>,
    fingerprint: Option<String>,
}

/// The type's family, named as `interop.py` names pyarrow types.
fn kind(t: &DataType) -> String {
    match t {
        DataType::Dictionary(_, v) => kind(v),
        DataType::Boolean => "bool".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            format!("int{}", t.primitive_width().unwrap_or(0) * 8)
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            format!("uint{}", t.primitive_width().unwrap_or(0) * 8)
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            format!("float{}", t.primitive_width().unwrap_or(0) * 8)
        }
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "binary".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp_ntz".into(),
        DataType::Timestamp(_, Some(tz)) if ["UTC", "+00:00", "Etc/UTC"].contains(&&**tz) => {
            "timestamp_utc".into()
        }
        DataType::Timestamp(_, Some(tz)) => format!("timestamp({tz})"),
        other => format!("unsupported({other})"),
    }
}

/// DataFusion SQL rendering one value of `column` as the canonical text
/// `interop.py` renders in DuckDB.
fn canon(column: &str, t: &DataType) -> Option<String> {
    let c = format!("\"{}\"", column.replace('"', "\"\""));
    let k = kind(t);
    let text = if ["bool", "date", "string"].contains(&k.as_str())
        || k.starts_with("int")
        || k.starts_with("uint")
        || k.starts_with("decimal")
    {
        format!("CAST({c} AS VARCHAR)")
    } else if k.starts_with("float") {
        format!(
            "CASE WHEN isnan({c}) THEN 'nan' \
             WHEN abs({c}) < 1e12 THEN CAST(CAST(round({c} * 1000000) AS BIGINT) AS VARCHAR) \
             ELSE CAST({c} > 0 AS VARCHAR) END"
        )
    } else if k.starts_with("timestamp") {
        let unit = match t {
            DataType::Timestamp(unit, _) => *unit,
            DataType::Dictionary(_, v) => match v.as_ref() {
                DataType::Timestamp(unit, _) => *unit,
                _ => return None,
            },
            _ => return None,
        };
        let micros = match unit {
            TimeUnit::Second => format!("CAST({c} AS BIGINT) * 1000000"),
            TimeUnit::Millisecond => format!("CAST({c} AS BIGINT) * 1000"),
            TimeUnit::Microsecond => format!("CAST({c} AS BIGINT)"),
            TimeUnit::Nanosecond => format!("CAST({c} AS BIGINT) / 1000"),
        };
        format!("CAST({micros} AS VARCHAR)")
    } else if k == "binary" {
        format!("encode({c}, 'hex')")
    } else {
        return None;
    };
    Some(format!("coalesce('=' || {text}, '~')"))
}

/// Every value of a one-row result as text (`None` for NULL).
fn row_text(batches: &[arrow::array::RecordBatch]) -> Vec<Option<String>> {
    let b = batches.iter().find(|b| b.num_rows() > 0).expect("one row");
    (0..b.num_columns())
        .map(|i| {
            let c = arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
            let c = c
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            (!c.is_null(0)).then(|| c.value(0).to_string())
        })
        .collect()
}

/// DataFusion's facts about `layer.table`, through tributary's SQL session.
async fn datafusion_facts(
    lake: &tributary_lake::Lake,
    session: &tributary_query::Session,
    layer: &str,
    table: &str,
) -> TableFacts {
    let from = format!("{layer}.\"{table}\"");
    let (schema, _) = session
        .sql_with_schema(&format!("SELECT * FROM {from} LIMIT 0"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "DataFusion cannot read {layer}.{table}: {}",
                error_chain(&e)
            )
        });
    let mut facts = TableFacts {
        version: lake
            .open(layer, table)
            .await
            .unwrap()
            .unwrap()
            .version()
            .map(|v| v as i64),
        ..TableFacts::default()
    };
    let mut rendered: Vec<(String, String)> = Vec::new();
    for f in schema.fields() {
        facts.columns.insert(
            f.name().clone(),
            ColumnFacts {
                kind: kind(f.data_type()),
                ..ColumnFacts::default()
            },
        );
        if let Some(r) = canon(f.name(), f.data_type()) {
            rendered.push((f.name().clone(), r));
        }
    }
    let mut sorted = rendered.clone();
    sorted.sort();
    let row = sorted
        .iter()
        .map(|(_, r)| r.as_str())
        .collect::<Vec<_>>()
        .join(" || chr(31) || ");
    let mut selects = vec!["count(*)".to_string()];
    for (name, r) in &rendered {
        selects.extend([
            format!("count(\"{}\")", name.replace('"', "\"\"")),
            format!("count(DISTINCT {r})"),
            format!("min({r})"),
            format!("max({r})"),
        ]);
    }
    let sql = format!("SELECT {} FROM {from}", selects.join(", "));
    let values = row_text(
        &session
            .sql(&sql)
            .await
            .unwrap_or_else(|e| panic!("{layer}.{table}: {}\n{sql}", error_chain(&e))),
    );
    facts.rows = values[0].as_deref().unwrap().parse().unwrap();
    for (i, (name, _)) in rendered.iter().enumerate() {
        let v = &values[1 + 4 * i..5 + 4 * i];
        let c = facts.columns.get_mut(name).unwrap();
        c.count = v[0].clone();
        c.distinct = v[1].clone();
        c.min = v[2].clone();
        c.max = v[3].clone();
    }
    // DataFusion takes one ORDER BY per aggregation: one branch per digest.
    let digests: Vec<String> = std::iter::once(row.as_str())
        .chain(rendered.iter().map(|(_, r)| r.as_str()))
        .enumerate()
        .map(|(i, e)| {
            format!(
                "SELECT {i} AS i, md5(string_agg(h, ',' ORDER BY h)) AS f FROM (SELECT md5({e}) AS h FROM {from})"
            )
        })
        .collect();
    let sql = digests.join(" UNION ALL ");
    let batches = session
        .sql(&sql)
        .await
        .unwrap_or_else(|e| panic!("{layer}.{table}: {}\n{sql}", error_chain(&e)));
    for b in &batches {
        let i = arrow::compute::cast(b.column(0), &DataType::Int64).unwrap();
        let i = i
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        let f = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        let f = f
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for j in 0..b.num_rows() {
            let digest = (!f.is_null(j)).then(|| f.value(j).to_string());
            match i.value(j) as usize {
                0 => facts.row_fingerprint = digest,
                k => {
                    let name = &rendered[k - 1].0;
                    facts.columns.get_mut(name).unwrap().fingerprint = digest;
                }
            }
        }
    }
    facts
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// One way's facts as printed by `interop.py`.
fn python_facts(v: &Value) -> Result<TableFacts, String> {
    if let Some(e) = v.get("error") {
        return Err(e.as_str().unwrap_or_default().to_string());
    }
    let mut facts = TableFacts {
        version: v["version"].as_i64(),
        rows: v["rows"].as_i64().unwrap_or(-1),
        row_fingerprint: text(&v["row_fingerprint"]),
        columns: BTreeMap::new(),
    };
    for (name, c) in v["columns"].as_object().unwrap() {
        facts.columns.insert(
            name.clone(),
            ColumnFacts {
                kind: c["kind"].as_str().unwrap_or_default().to_string(),
                count: text(&c["count"]),
                distinct: text(&c["distinct"]),
                min: text(&c["min"]),
                max: text(&c["max"]),
                fingerprint: text(&c["fingerprint"]),
            },
        );
    }
    Ok(facts)
}

/// Every difference between DataFusion's facts and those of another way
/// of reading the table (`other`), naming the column.
fn differences(name: &str, other: &str, df: &TableFacts, py: &TableFacts) -> Vec<String> {
    let mut out = Vec::new();
    if df.version != py.version {
        out.push(format!(
            "{name}: Delta version {:?} (DataFusion) vs {:?} ({other})",
            df.version, py.version
        ));
    }
    if df.rows != py.rows {
        out.push(format!(
            "{name}: {} rows (DataFusion) vs {} ({other})",
            df.rows, py.rows
        ));
    }
    for (column, d) in &df.columns {
        let Some(p) = py.columns.get(column) else {
            out.push(format!("{name}.{column}: missing in {other}"));
            continue;
        };
        if d.kind.starts_with("unsupported") {
            out.push(format!("{name}.{column}: type {} not compared", d.kind));
        }
        if d != p {
            out.push(format!(
                "{name}.{column}: DataFusion {d:?} vs {other} {p:?}"
            ));
        }
    }
    for column in py.columns.keys() {
        if !df.columns.contains_key(column) {
            out.push(format!("{name}.{column}: only in {other}"));
        }
    }
    if out.is_empty() && df.row_fingerprint != py.row_fingerprint {
        out.push(format!(
            "{name}: every column agrees but whole rows differ in {other} ({:?} vs {:?})",
            df.row_fingerprint, py.row_fingerprint
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lake_table_reads_the_same_in_deltalake_and_duckdb() {
    let mut env = Env::stack().await;
    env.start().await;
    env.start_pipeline();
    env.load(30, 12, 5);
    // A message no decoder takes, so the dead-letter table exists too.
    produce_raw(&env, "payments", b"interop", b"\x00\xffnot an event").await;
    env.assert_running();
    assert_lake_equals_source(&env).await;
    env.run_ok(&["etl", "run", "marts"]);
    // Then schema changes, so silver tables whose columns were added (Delta
    // `add_columns`) and widened (an overwrite with a new schema) are read too.
    let stack = env.stack_state();
    for shard in &stack.shards {
        let db = pipeline_connect(&shard.dsn()).await;
        for sql in [
            "ALTER TABLE customers ADD COLUMN loyalty int",
            "UPDATE customers SET loyalty = 7 WHERE id % 2 = 0",
            "ALTER TABLE customers ALTER COLUMN loyalty TYPE bigint",
            "UPDATE customers SET loyalty = 5000000000 WHERE id % 3 = 0",
            "UPDATE customers SET city = 'Leiden' WHERE id % 5 = 0",
        ] {
            db.batch_execute(sql).await.unwrap();
        }
    }
    assert_lake_equals_source(&env).await;
    // An incremental run of the marts: gold tables with more than one commit.
    env.run_ok(&["etl", "run", "marts"]);
    // Nothing writes while the engines compare.
    for name in ["ingest", "cdc", "oltp"] {
        env.kill9(name);
    }
    // Replaying the dead letter fails again: it stays pending.
    let report: Value =
        serde_json::from_str(&env.run_ok(&["lake", "dlq", "replay", "--all", "--json"])).unwrap();
    assert_eq!(report["outcomes"][0]["result"], "failed", "{report}");

    let lake = tributary_lake::Lake::new(&env.lake_config()).unwrap();
    let session = tributary_query::Session::new(lake.clone()).await.unwrap();
    let mut names = Vec::new();
    for layer in LAYERS {
        for table in lake.list_tables(layer).await.unwrap() {
            names.push((layer, table));
        }
    }
    for expected in [
        "bronze.orders",
        "bronze._dead_letters",
        "bronze._schema_changes",
        "silver.orders",
    ] {
        assert!(
            names.iter().any(|(l, t)| format!("{l}.{t}") == expected),
            "{expected} was not written: {names:?}"
        );
    }
    assert!(
        names.iter().filter(|(l, _)| *l == "gold").count() >= 5,
        "the marts were not built: {names:?}"
    );

    let root = lake
        .root()
        .to_file_path()
        .expect("the test lake is a local folder");
    if let Ok(keep) = std::env::var("TRIBUTARY_INTEROP_KEEP") {
        let _ = Command::new("cp").arg("-r").arg(&root).arg(keep).status();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/interop.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&root)
        .args(names.iter().map(|(l, t)| format!("{l}.{t}")))
        .output()
        .expect("python3 runs (scripts/bootstrap.sh installs deltalake, pyarrow and duckdb)");
    assert!(
        out.status.success(),
        "interop.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "interop.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!(
        "deltalake {}, duckdb {}, pyarrow {}",
        report["deltalake"], report["duckdb"], report["pyarrow"]
    );

    let mut problems = Vec::new();
    let mut compared = 0;
    for (layer, table) in &names {
        let name = format!("{layer}.{table}");
        let df = datafusion_facts(&lake, &session, layer, table).await;
        let facts = &report["tables"][&name];
        for (way, other) in [
            ("deltalake", "deltalake+DuckDB over Arrow"),
            ("duckdb", "DuckDB over the Parquet files"),
        ] {
            match python_facts(&facts[way]) {
                Err(e) => problems.push(format!("{name}: {e}")),
                Ok(py) => {
                    problems.extend(differences(&name, other, &df, &py));
                    compared += 1;
                }
            }
        }
        // DuckDB read the files itself: as many as the table has rows in.
        let files = facts["duckdb"]["files"].as_i64().unwrap_or(-1);
        if df.rows > 0 && files < 1 {
            problems.push(format!("{name}: DuckDB read {files} files"));
        }
        eprintln!(
            "{name}: version {:?}, {} rows, {} columns, {files} files",
            df.version,
            df.rows,
            df.columns.len()
        );
    }
    assert!(
        problems.is_empty(),
        "{} differences between DataFusion and the other readers:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(compared, 2 * names.len());
    assert!(
        names.len() >= 15,
        "compared only {} tables: {names:?}",
        names.len()
    );
}
