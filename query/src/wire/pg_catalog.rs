//! A `pg_catalog` schema answered from the lake, and the catalog functions
//! PostgreSQL clients call, so their introspection queries run as real SQL.
//!
//! JDBC's `DatabaseMetaData`, SQLAlchemy's inspector and asyncpg's type
//! lookups each send their own catalog queries; recognising each by its
//! text would never end. Instead the wire server registers `pg_catalog` as
//! a schema of DataFusion tables built per statement from the lake listing
//! (schemas become namespaces, Delta tables relations, their Arrow columns
//! attributes with the PostgreSQL type each is sent as) plus fixed rows
//! where the fact is fixed (built-in types, the one database and role, the
//! server's settings). Tables a Delta lake has no rows for (indexes,
//! constraints, defaults, comments, triggers, inheritance) exist empty, with
//! their columns, which is the truth. The PostgreSQL-only syntax in those
//! queries is rewritten first (see [`super::rewrite`]).
//!
//! Oids: namespaces and built-in types keep PostgreSQL's numbers where they
//! have one; a table's oid is a stable hash of its name
//! ([`super::catalog::oid`]), the same one psql's `\d` path uses.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Int16Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use pgwire::api::Type;

use super::catalog::{format_type, oid as table_oid};
use super::encode::{pg_type, typlen, typmod};
use crate::lake_schema::LakeSchema;

/// The namespace oid of `pg_catalog` itself (PostgreSQL's).
pub(crate) const PG_CATALOG_OID: u32 = 11;
/// The owner of everything: PostgreSQL's bootstrap superuser oid.
const OWNER_OID: u32 = 10;
/// The one database's oid.
const DATABASE_OID: u32 = 16_383;
/// `pg_collation` oid of the default collation.
const DEFAULT_COLLATION: u32 = 100;

/// The server's settings as `SHOW` and `pg_settings` report them.
#[derive(Clone, Debug)]
pub(crate) struct Setting {
    pub(crate) name: &'static str,
    pub(crate) value: String,
    pub(crate) unit: Option<&'static str>,
    pub(crate) description: &'static str,
}

/// Field metadata naming the PostgreSQL type a column is sent as when its
/// Arrow type alone does not say (`"char"` catalog columns); kept by
/// DataFusion through column references.
pub(crate) const PG_TYPE_KEY: &str = "tributary.pg_type";

/// What the server is configured with, for settings and functions.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) user: String,
    pub(crate) database: String,
    pub(crate) settings: Vec<Setting>,
}

/// The search path clients see; unqualified names resolve in this order.
pub(crate) const SEARCH_PATH: [&str; 3] = ["silver", "bronze", "gold"];
/// The PostgreSQL version the server speaks as.
pub(crate) const SERVER_VERSION: &str = "16.6";

/// The settings the server reports (`SHOW x`, `pg_settings`).
pub(crate) fn settings(statement_timeout_ms: Option<u128>) -> Vec<Setting> {
    let s = |name, value: &str, unit, description| Setting {
        name,
        value: value.to_string(),
        unit,
        description,
    };
    vec![
        s(
            "server_version",
            SERVER_VERSION,
            None,
            "Shows the server version.",
        ),
        s(
            "server_version_num",
            "160006",
            None,
            "Shows the server version as an integer.",
        ),
        s(
            "server_encoding",
            "UTF8",
            None,
            "Shows the server (database) character set encoding.",
        ),
        s(
            "client_encoding",
            "UTF8",
            None,
            "Sets the client's character set encoding.",
        ),
        s(
            "search_path",
            &SEARCH_PATH.join(", "),
            None,
            "Sets the schema search order for names that are not schema-qualified.",
        ),
        s(
            "timezone",
            "UTC",
            None,
            "Sets the time zone for displaying and interpreting time stamps; values are sent in UTC.",
        ),
        s(
            "datestyle",
            "ISO, YMD",
            None,
            "Sets the display format for date and time values.",
        ),
        s(
            "intervalstyle",
            "postgres",
            None,
            "Sets the display format for interval values.",
        ),
        s(
            "standard_conforming_strings",
            "on",
            None,
            "Causes '...' strings to treat backslashes literally.",
        ),
        s(
            "integer_datetimes",
            "on",
            None,
            "Shows whether datetimes are integer based.",
        ),
        s(
            "transaction_isolation",
            "read committed",
            None,
            "Sets the current transaction's isolation level; every statement reads committed table versions.",
        ),
        s(
            "default_transaction_read_only",
            "on",
            None,
            "The lake is written by the pipelines only.",
        ),
        s(
            "transaction_read_only",
            "on",
            None,
            "The lake is written by the pipelines only.",
        ),
        s(
            "max_identifier_length",
            "63",
            None,
            "Shows the maximum identifier length.",
        ),
        s(
            "statement_timeout",
            &statement_timeout_ms.map_or("0".to_string(), |ms| ms.to_string()),
            Some("ms"),
            "Sets the maximum allowed duration of any statement ([sql] statement_timeout_ms).",
        ),
        s(
            "bytea_output",
            "hex",
            None,
            "Sets the output format for bytea.",
        ),
        s(
            "extra_float_digits",
            "1",
            None,
            "Floats are sent in their shortest exact form.",
        ),
        s(
            "is_superuser",
            "off",
            None,
            "Shows whether the current user is a superuser.",
        ),
        s(
            "lc_collate",
            "C.UTF-8",
            None,
            "Shows the collation order locale.",
        ),
        s(
            "lc_ctype",
            "C.UTF-8",
            None,
            "Shows the character classification and case conversion locale.",
        ),
        s(
            "application_name",
            "",
            None,
            "Sets the application name to be reported in statistics and logs.",
        ),
        s(
            "default_table_access_method",
            "heap",
            None,
            "Sets the default table access method for new tables.",
        ),
        s("jit", "off", None, "Allow JIT compilation."),
    ]
}

/// The built-in types with their array types, and PostgreSQL's category.
const TYPES: &[(Type, Type, &str)] = &[
    (Type::BOOL, Type::BOOL_ARRAY, "B"),
    (Type::BYTEA, Type::BYTEA_ARRAY, "U"),
    (Type::CHAR, Type::CHAR_ARRAY, "Z"),
    (Type::NAME, Type::NAME_ARRAY, "S"),
    (Type::INT8, Type::INT8_ARRAY, "N"),
    (Type::INT2, Type::INT2_ARRAY, "N"),
    (Type::INT4, Type::INT4_ARRAY, "N"),
    (Type::REGPROC, Type::REGPROC_ARRAY, "N"),
    (Type::TEXT, Type::TEXT_ARRAY, "S"),
    (Type::OID, Type::OID_ARRAY, "N"),
    (Type::JSON, Type::JSON_ARRAY, "U"),
    (Type::FLOAT4, Type::FLOAT4_ARRAY, "N"),
    (Type::FLOAT8, Type::FLOAT8_ARRAY, "N"),
    (Type::BPCHAR, Type::BPCHAR_ARRAY, "S"),
    (Type::VARCHAR, Type::VARCHAR_ARRAY, "S"),
    (Type::DATE, Type::DATE_ARRAY, "D"),
    (Type::TIME, Type::TIME_ARRAY, "D"),
    (Type::TIMESTAMP, Type::TIMESTAMP_ARRAY, "D"),
    (Type::TIMESTAMPTZ, Type::TIMESTAMPTZ_ARRAY, "D"),
    (Type::INTERVAL, Type::INTERVAL_ARRAY, "T"),
    (Type::NUMERIC, Type::NUMERIC_ARRAY, "N"),
    (Type::REGCLASS, Type::REGCLASS_ARRAY, "N"),
    (Type::REGTYPE, Type::REGTYPE_ARRAY, "N"),
    (Type::UUID, Type::UUID_ARRAY, "U"),
    (Type::JSONB, Type::JSONB_ARRAY, "U"),
];

/// The built-in type named `name` (`int4`, `integer`, `_text`, `text[]`).
pub(crate) fn type_by_name(name: &str) -> Option<Type> {
    let name = name.trim_start_matches("pg_catalog.");
    let name = match name {
        "integer" | "int" => "int4",
        "bigint" => "int8",
        "smallint" => "int2",
        "boolean" => "bool",
        "real" => "float4",
        "double precision" => "float8",
        "character varying" => "varchar",
        "timestamp with time zone" => "timestamptz",
        "timestamp without time zone" => "timestamp",
        other => other,
    };
    let array = name.strip_suffix("[]").map(|n| format!("_{n}"));
    let wanted = array.as_deref().unwrap_or(name);
    TYPES
        .iter()
        .flat_map(|(base, array, _)| [base, array])
        .find(|t| t.name() == wanted)
        .cloned()
}

/// PostgreSQL's I/O function name of a type (`int4in`, `numeric_in`, `array_in`).
fn io_function(ty: &Type, array: bool, direction: &str) -> String {
    if array {
        return format!("array_{direction}");
    }
    let name = ty.name();
    let underscored = [
        "json",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "interval",
        "numeric",
        "uuid",
        "jsonb",
    ];
    if underscored.contains(&name) {
        format!("{name}_{direction}")
    } else {
        format!("{name}{direction}")
    }
}

/// The `pg_catalog` schema: table names are fixed, rows are built when a
/// statement names the table.
#[derive(Debug)]
pub(crate) struct PgCatalog {
    layers: Vec<Arc<LakeSchema>>,
    identity: Identity,
}

/// A catalog table's columns: name and type. Types: `oid` is UInt32,
/// `name`/`text`/`"char"` Utf8, `int2` Int16, `int4` Int32, `int8` Int64,
/// `float4` Float32, `bool` Boolean, `text[]` a list of Utf8.
type Columns = &'static [(&'static str, Col)];

#[derive(Clone, Copy, Debug)]
enum Col {
    Oid,
    Text,
    /// PostgreSQL's one-byte `"char"` (`relkind`, `typtype`): text here,
    /// sent as `"char"` (see [`PG_TYPE_KEY`]).
    Char,
    I2,
    I4,
    I8,
    F4,
    Bool,
    TextArray,
    /// `int2vector` (`pg_index.indkey`): the attribute numbers.
    I2Array,
}

/// One value of a catalog row.
#[derive(Clone, Debug)]
enum V {
    O(u32),
    T(String),
    I(i64),
    F(f32),
    B(bool),
    Null,
}

fn t(s: impl Into<String>) -> V {
    V::T(s.into())
}

const NAMESPACE: Columns = &[
    ("oid", Col::Oid),
    ("nspname", Col::Text),
    ("nspowner", Col::Oid),
    ("nspacl", Col::TextArray),
];

const CLASS: Columns = &[
    ("oid", Col::Oid),
    ("relname", Col::Text),
    ("relnamespace", Col::Oid),
    ("reltype", Col::Oid),
    ("reloftype", Col::Oid),
    ("relowner", Col::Oid),
    ("relam", Col::Oid),
    ("relfilenode", Col::Oid),
    ("reltablespace", Col::Oid),
    ("relpages", Col::I4),
    ("reltuples", Col::F4),
    ("relallvisible", Col::I4),
    ("reltoastrelid", Col::Oid),
    ("relhasindex", Col::Bool),
    ("relisshared", Col::Bool),
    ("relpersistence", Col::Char),
    ("relkind", Col::Char),
    ("relnatts", Col::I2),
    ("relchecks", Col::I2),
    ("relhasrules", Col::Bool),
    ("relhastriggers", Col::Bool),
    ("relhassubclass", Col::Bool),
    ("relrowsecurity", Col::Bool),
    ("relforcerowsecurity", Col::Bool),
    ("relispopulated", Col::Bool),
    ("relreplident", Col::Char),
    ("relispartition", Col::Bool),
    ("relrewrite", Col::Oid),
    ("relfrozenxid", Col::I8),
    ("relminmxid", Col::I8),
    ("relacl", Col::TextArray),
    ("reloptions", Col::TextArray),
    ("relpartbound", Col::Text),
];

const ATTRIBUTE: Columns = &[
    ("attrelid", Col::Oid),
    ("attname", Col::Text),
    ("atttypid", Col::Oid),
    ("attstattarget", Col::I4),
    ("attlen", Col::I2),
    ("attnum", Col::I2),
    ("attndims", Col::I4),
    ("attcacheoff", Col::I4),
    ("atttypmod", Col::I4),
    ("attbyval", Col::Bool),
    ("attalign", Col::Char),
    ("attstorage", Col::Char),
    ("attcompression", Col::Text),
    ("attnotnull", Col::Bool),
    ("atthasdef", Col::Bool),
    ("atthasmissing", Col::Bool),
    ("attidentity", Col::Char),
    ("attgenerated", Col::Char),
    ("attisdropped", Col::Bool),
    ("attislocal", Col::Bool),
    ("attinhcount", Col::I4),
    ("attcollation", Col::Oid),
    ("attacl", Col::TextArray),
    ("attoptions", Col::TextArray),
    ("attfdwoptions", Col::TextArray),
];

const TYPE: Columns = &[
    ("oid", Col::Oid),
    ("typname", Col::Text),
    ("typnamespace", Col::Oid),
    ("typowner", Col::Oid),
    ("typlen", Col::I2),
    ("typbyval", Col::Bool),
    ("typtype", Col::Char),
    ("typcategory", Col::Char),
    ("typispreferred", Col::Bool),
    ("typisdefined", Col::Bool),
    ("typdelim", Col::Char),
    ("typrelid", Col::Oid),
    ("typsubscript", Col::Text),
    ("typelem", Col::Oid),
    ("typarray", Col::Oid),
    ("typinput", Col::Text),
    ("typoutput", Col::Text),
    ("typreceive", Col::Text),
    ("typsend", Col::Text),
    ("typmodin", Col::Text),
    ("typmodout", Col::Text),
    ("typanalyze", Col::Text),
    ("typalign", Col::Char),
    ("typstorage", Col::Char),
    ("typnotnull", Col::Bool),
    ("typbasetype", Col::Oid),
    ("typtypmod", Col::I4),
    ("typndims", Col::I4),
    ("typcollation", Col::Oid),
    ("typdefaultbin", Col::Text),
    ("typdefault", Col::Text),
    ("typacl", Col::TextArray),
];

const DATABASE: Columns = &[
    ("oid", Col::Oid),
    ("datname", Col::Text),
    ("datdba", Col::Oid),
    ("encoding", Col::I4),
    ("datlocprovider", Col::Text),
    ("datistemplate", Col::Bool),
    ("datallowconn", Col::Bool),
    ("datconnlimit", Col::I4),
    ("dattablespace", Col::Oid),
    ("datcollate", Col::Text),
    ("datctype", Col::Text),
    ("datacl", Col::TextArray),
];

const ROLES: Columns = &[
    ("oid", Col::Oid),
    ("rolname", Col::Text),
    ("rolsuper", Col::Bool),
    ("rolinherit", Col::Bool),
    ("rolcreaterole", Col::Bool),
    ("rolcreatedb", Col::Bool),
    ("rolcanlogin", Col::Bool),
    ("rolreplication", Col::Bool),
    ("rolconnlimit", Col::I4),
    ("rolvaliduntil", Col::Text),
    ("rolbypassrls", Col::Bool),
];

const USER: Columns = &[
    ("usename", Col::Text),
    ("usesysid", Col::Oid),
    ("usecreatedb", Col::Bool),
    ("usesuper", Col::Bool),
    ("userepl", Col::Bool),
    ("usebypassrls", Col::Bool),
    ("valuntil", Col::Text),
];

const SETTINGS: Columns = &[
    ("name", Col::Text),
    ("setting", Col::Text),
    ("unit", Col::Text),
    ("category", Col::Text),
    ("short_desc", Col::Text),
    ("extra_desc", Col::Text),
    ("context", Col::Text),
    ("vartype", Col::Text),
    ("source", Col::Text),
    ("min_val", Col::Text),
    ("max_val", Col::Text),
    ("enumvals", Col::TextArray),
    ("boot_val", Col::Text),
    ("reset_val", Col::Text),
    ("pending_restart", Col::Bool),
];

const TABLES: Columns = &[
    ("schemaname", Col::Text),
    ("tablename", Col::Text),
    ("tableowner", Col::Text),
    ("tablespace", Col::Text),
    ("hasindexes", Col::Bool),
    ("hasrules", Col::Bool),
    ("hastriggers", Col::Bool),
    ("rowsecurity", Col::Bool),
];

const AM: Columns = &[
    ("oid", Col::Oid),
    ("amname", Col::Text),
    ("amhandler", Col::Text),
    ("amtype", Col::Text),
];

/// Catalogs a Delta lake has no rows in: they exist, empty, with the
/// columns clients select from them.
const EMPTY: &[(&str, Columns)] = &[
    (
        "pg_index",
        &[
            ("indexrelid", Col::Oid),
            ("indrelid", Col::Oid),
            ("indnatts", Col::I2),
            ("indnkeyatts", Col::I2),
            ("indisunique", Col::Bool),
            ("indnullsnotdistinct", Col::Bool),
            ("indisprimary", Col::Bool),
            ("indisexclusion", Col::Bool),
            ("indimmediate", Col::Bool),
            ("indisclustered", Col::Bool),
            ("indisvalid", Col::Bool),
            ("indcheckxmin", Col::Bool),
            ("indisready", Col::Bool),
            ("indislive", Col::Bool),
            ("indisreplident", Col::Bool),
            ("indkey", Col::I2Array),
            ("indcollation", Col::TextArray),
            ("indclass", Col::TextArray),
            ("indoption", Col::I2Array),
            ("indexprs", Col::Text),
            ("indpred", Col::Text),
        ],
    ),
    (
        "pg_constraint",
        &[
            ("oid", Col::Oid),
            ("conname", Col::Text),
            ("connamespace", Col::Oid),
            ("contype", Col::Char),
            ("condeferrable", Col::Bool),
            ("condeferred", Col::Bool),
            ("convalidated", Col::Bool),
            ("conrelid", Col::Oid),
            ("contypid", Col::Oid),
            ("conindid", Col::Oid),
            ("conparentid", Col::Oid),
            ("confrelid", Col::Oid),
            ("confupdtype", Col::Char),
            ("confdeltype", Col::Char),
            ("confmatchtype", Col::Char),
            ("conislocal", Col::Bool),
            ("coninhcount", Col::I4),
            ("connoinherit", Col::Bool),
            ("conkey", Col::TextArray),
            ("confkey", Col::TextArray),
            ("conbin", Col::Text),
        ],
    ),
    (
        "pg_attrdef",
        &[
            ("oid", Col::Oid),
            ("adrelid", Col::Oid),
            ("adnum", Col::I2),
            ("adbin", Col::Text),
        ],
    ),
    (
        "pg_description",
        &[
            ("objoid", Col::Oid),
            ("classoid", Col::Oid),
            ("objsubid", Col::I4),
            ("description", Col::Text),
        ],
    ),
    (
        "pg_inherits",
        &[
            ("inhrelid", Col::Oid),
            ("inhparent", Col::Oid),
            ("inhseqno", Col::I4),
            ("inhdetachpending", Col::Bool),
        ],
    ),
    (
        "pg_trigger",
        &[
            ("oid", Col::Oid),
            ("tgrelid", Col::Oid),
            ("tgname", Col::Text),
            ("tgenabled", Col::Text),
            ("tgisinternal", Col::Bool),
        ],
    ),
    (
        "pg_enum",
        &[
            ("oid", Col::Oid),
            ("enumtypid", Col::Oid),
            ("enumsortorder", Col::F4),
            ("enumlabel", Col::Text),
        ],
    ),
    (
        "pg_range",
        &[
            ("rngtypid", Col::Oid),
            ("rngsubtype", Col::Oid),
            ("rngmultitypid", Col::Oid),
        ],
    ),
    (
        "pg_sequence",
        &[
            ("seqrelid", Col::Oid),
            ("seqtypid", Col::Oid),
            ("seqstart", Col::I8),
            ("seqincrement", Col::I8),
            ("seqmax", Col::I8),
            ("seqmin", Col::I8),
            ("seqcache", Col::I8),
            ("seqcycle", Col::Bool),
        ],
    ),
    (
        "pg_views",
        &[
            ("schemaname", Col::Text),
            ("viewname", Col::Text),
            ("viewowner", Col::Text),
            ("definition", Col::Text),
        ],
    ),
    (
        "pg_matviews",
        &[
            ("schemaname", Col::Text),
            ("matviewname", Col::Text),
            ("matviewowner", Col::Text),
            ("definition", Col::Text),
        ],
    ),
    (
        "pg_collation",
        &[
            ("oid", Col::Oid),
            ("collname", Col::Text),
            ("collnamespace", Col::Oid),
        ],
    ),
    (
        "pg_policy",
        &[
            ("oid", Col::Oid),
            ("polname", Col::Text),
            ("polrelid", Col::Oid),
        ],
    ),
    (
        "pg_foreign_table",
        &[("ftrelid", Col::Oid), ("ftserver", Col::Oid)],
    ),
    (
        "pg_partitioned_table",
        &[("partrelid", Col::Oid), ("partstrat", Col::Text)],
    ),
    (
        "pg_depend",
        &[
            ("classid", Col::Oid),
            ("objid", Col::Oid),
            ("objsubid", Col::I4),
            ("refclassid", Col::Oid),
            ("refobjid", Col::Oid),
            ("refobjsubid", Col::I4),
            ("deptype", Col::Text),
        ],
    ),
    (
        "pg_proc",
        &[
            ("oid", Col::Oid),
            ("proname", Col::Text),
            ("pronamespace", Col::Oid),
            ("prorettype", Col::Oid),
            ("prokind", Col::Char),
        ],
    ),
    (
        "pg_statistic_ext",
        &[
            ("oid", Col::Oid),
            ("stxrelid", Col::Oid),
            ("stxname", Col::Text),
            ("stxnamespace", Col::Oid),
            ("stxowner", Col::Oid),
            ("stxstattarget", Col::I4),
            ("stxkeys", Col::I2Array),
            ("stxkind", Col::TextArray),
            ("stxexprs", Col::Text),
        ],
    ),
    (
        "pg_publication",
        &[
            ("oid", Col::Oid),
            ("pubname", Col::Text),
            ("pubowner", Col::Oid),
            ("puballtables", Col::Bool),
            ("pubinsert", Col::Bool),
            ("pubupdate", Col::Bool),
            ("pubdelete", Col::Bool),
            ("pubtruncate", Col::Bool),
            ("pubviaroot", Col::Bool),
        ],
    ),
    (
        "pg_publication_rel",
        &[
            ("oid", Col::Oid),
            ("prpubid", Col::Oid),
            ("prrelid", Col::Oid),
            ("prqual", Col::Text),
            ("prattrs", Col::I2Array),
        ],
    ),
    (
        "pg_publication_namespace",
        &[
            ("oid", Col::Oid),
            ("pnpubid", Col::Oid),
            ("pnnspid", Col::Oid),
        ],
    ),
    (
        "pg_rewrite",
        &[
            ("oid", Col::Oid),
            ("rulename", Col::Text),
            ("ev_class", Col::Oid),
            ("ev_type", Col::Char),
            ("ev_enabled", Col::Char),
            ("is_instead", Col::Bool),
            ("ev_qual", Col::Text),
            ("ev_action", Col::Text),
        ],
    ),
    (
        "pg_tablespace",
        &[
            ("oid", Col::Oid),
            ("spcname", Col::Text),
            ("spcowner", Col::Oid),
            ("spcacl", Col::TextArray),
            ("spcoptions", Col::TextArray),
        ],
    ),
    (
        "pg_opclass",
        &[
            ("oid", Col::Oid),
            ("opcmethod", Col::Oid),
            ("opcname", Col::Text),
            ("opcnamespace", Col::Oid),
            ("opcowner", Col::Oid),
            ("opcfamily", Col::Oid),
            ("opcintype", Col::Oid),
            ("opcdefault", Col::Bool),
            ("opckeytype", Col::Oid),
        ],
    ),
    (
        "pg_extension",
        &[
            ("oid", Col::Oid),
            ("extname", Col::Text),
            ("extnamespace", Col::Oid),
            ("extversion", Col::Text),
        ],
    ),
];

const FILLED: &[&str] = &[
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_database",
    "pg_roles",
    "pg_authid",
    "pg_user",
    "pg_settings",
    "pg_tables",
    "pg_am",
];

/// The oid of a `pg_catalog` table, for `'pg_class'::regclass`:
/// PostgreSQL's own for the ones tools compare with, a stable hash for the
/// rest; `None` when there is no such catalog table.
pub(crate) fn catalog_table_oid(name: &str) -> Option<u32> {
    let known = match name {
        "pg_type" => 1247,
        "pg_attribute" => 1249,
        "pg_proc" => 1255,
        "pg_class" => 1259,
        "pg_authid" => 1260,
        "pg_database" => 1262,
        "pg_am" => 2601,
        "pg_attrdef" => 2604,
        "pg_constraint" => 2606,
        "pg_description" => 2609,
        "pg_index" => 2610,
        "pg_namespace" => 2615,
        "pg_trigger" => 2620,
        _ => 0,
    };
    if known != 0 {
        return Some(known);
    }
    is_catalog_table(name).then(|| table_oid("pg_catalog", name))
}

/// Whether `pg_catalog.<name>` exists here (filled or always empty).
fn is_catalog_table(name: &str) -> bool {
    FILLED.contains(&name) || catalog_table_is_empty(name)
}

/// Whether `name` is a `pg_catalog` table that is always empty here
/// (defaults, constraints, sequences, collations: none in a Delta lake).
pub(crate) fn catalog_table_is_empty(name: &str) -> bool {
    EMPTY.iter().any(|(n, _)| *n == name)
}

impl PgCatalog {
    pub(crate) fn new(layers: Vec<Arc<LakeSchema>>, identity: Identity) -> PgCatalog {
        PgCatalog { layers, identity }
    }

    /// The lake's schemas with their namespace oids, in `LAYERS` order.
    fn namespaces(&self) -> Vec<(u32, &'static str)> {
        self.layers
            .iter()
            .map(|l| (namespace_oid(l.layer()), l.layer()))
            .collect()
    }

    /// Every lake table: (oid, layer, name), as the layers were last
    /// listed: every statement lists them before it is planned (the wire
    /// handler's `prepare`), and catalog tables are built while planning.
    fn relations(&self) -> Vec<(u32, &'static str, String)> {
        let mut out = Vec::new();
        for layer in &self.layers {
            for name in layer.table_names() {
                out.push((table_oid(layer.layer(), &name), layer.layer(), name));
            }
        }
        out
    }

    async fn build(&self, name: &str) -> crate::Result<Option<Arc<dyn TableProvider>>> {
        if let Some((_, columns)) = EMPTY.iter().find(|(n, _)| *n == name) {
            return Ok(Some(table(columns, Vec::new())?));
        }
        let user = &self.identity.user;
        let (columns, rows): (Columns, Vec<Vec<V>>) = match name {
            "pg_namespace" => {
                let mut rows = vec![
                    vec![
                        V::O(PG_CATALOG_OID),
                        t("pg_catalog"),
                        V::O(OWNER_OID),
                        V::Null,
                    ],
                    vec![
                        V::O(namespace_oid("information_schema")),
                        t("information_schema"),
                        V::O(OWNER_OID),
                        V::Null,
                    ],
                ];
                for (oid, layer) in self.namespaces() {
                    rows.push(vec![V::O(oid), t(layer), V::O(OWNER_OID), V::Null]);
                }
                (NAMESPACE, rows)
            }
            "pg_class" => {
                let rows = self
                    .relations()
                    .into_iter()
                    .map(|(oid, layer, name)| class_row(oid, namespace_oid(layer), name))
                    .collect();
                (CLASS, rows)
            }
            "pg_tables" => {
                let rows = self
                    .relations()
                    .into_iter()
                    .map(|(_, layer, name)| {
                        vec![
                            t(layer),
                            t(name),
                            t(user.clone()),
                            V::Null,
                            V::B(false),
                            V::B(false),
                            V::B(false),
                            V::B(false),
                        ]
                    })
                    .collect();
                (TABLES, rows)
            }
            "pg_attribute" => {
                let mut rows = Vec::new();
                for layer in &self.layers {
                    for name in layer.table_names() {
                        let Some(provider) = layer.open(&name).await? else {
                            continue;
                        };
                        let relid = table_oid(layer.layer(), &name);
                        for (i, field) in provider.schema().fields().iter().enumerate() {
                            rows.push(attribute_row(relid, i + 1, field));
                        }
                    }
                }
                (ATTRIBUTE, rows)
            }
            "pg_type" => (TYPE, type_rows()),
            "pg_database" => (
                DATABASE,
                vec![vec![
                    V::O(DATABASE_OID),
                    t(self.identity.database.clone()),
                    V::O(OWNER_OID),
                    V::I(6),
                    t("c"),
                    V::B(false),
                    V::B(true),
                    V::I(-1),
                    V::O(1663),
                    t("C.UTF-8"),
                    t("C.UTF-8"),
                    V::Null,
                ]],
            ),
            "pg_roles" | "pg_authid" => (
                ROLES,
                vec![vec![
                    V::O(OWNER_OID),
                    t(user.clone()),
                    V::B(false),
                    V::B(true),
                    V::B(false),
                    V::B(false),
                    V::B(true),
                    V::B(false),
                    V::I(-1),
                    V::Null,
                    V::B(false),
                ]],
            ),
            "pg_user" => (
                USER,
                vec![vec![
                    t(user.clone()),
                    V::O(OWNER_OID),
                    V::B(false),
                    V::B(false),
                    V::B(false),
                    V::B(false),
                    V::Null,
                ]],
            ),
            "pg_settings" => {
                let rows = self
                    .identity
                    .settings
                    .iter()
                    .map(|s| {
                        vec![
                            t(s.name),
                            t(s.value.clone()),
                            s.unit.map_or(V::Null, t),
                            t("tributary"),
                            t(s.description),
                            V::Null,
                            t("internal"),
                            t(if s.unit.is_some() {
                                "integer"
                            } else {
                                "string"
                            }),
                            t("default"),
                            V::Null,
                            V::Null,
                            V::Null,
                            t(s.value.clone()),
                            t(s.value.clone()),
                            V::B(false),
                        ]
                    })
                    .collect();
                (SETTINGS, rows)
            }
            "pg_am" => (
                AM,
                vec![vec![V::O(2), t("heap"), t("heap_tableam_handler"), t("t")]],
            ),
            _ => return Ok(None),
        };
        Ok(Some(table(columns, rows)?))
    }
}

/// A namespace oid: PostgreSQL's for its own, a small stable number above
/// the system range for each lake layer.
pub(crate) fn namespace_oid(name: &str) -> u32 {
    match name {
        "pg_catalog" => PG_CATALOG_OID,
        "public" => 2200,
        "information_schema" => 13_000,
        other => {
            let index = tributary_model::domain::LAYERS
                .iter()
                .position(|l| *l == other)
                .unwrap_or(99) as u32;
            16_000 + index
        }
    }
}

fn class_row(oid: u32, namespace: u32, name: String) -> Vec<V> {
    vec![
        V::O(oid),
        t(name),
        V::O(namespace),
        V::O(0),
        V::O(0),
        V::O(OWNER_OID),
        V::O(2),
        V::O(oid),
        V::O(0),
        V::I(0),
        V::F(-1.0),
        V::I(0),
        V::O(0),
        V::B(false),
        V::B(false),
        t("p"),
        t("r"),
        V::I(0),
        V::I(0),
        V::B(false),
        V::B(false),
        V::B(false),
        V::B(false),
        V::B(false),
        V::B(true),
        t("d"),
        V::B(false),
        V::O(0),
        V::I(0),
        V::I(0),
        V::Null,
        V::Null,
        V::Null,
    ]
}

fn attribute_row(relid: u32, number: usize, field: &Field) -> Vec<V> {
    let ty = pg_type(field.data_type());
    let len = typlen(&ty);
    let collation = if ty == Type::TEXT {
        DEFAULT_COLLATION
    } else {
        0
    };
    vec![
        V::O(relid),
        t(field.name().clone()),
        V::O(ty.oid()),
        V::I(-1),
        V::I(len as i64),
        V::I(number as i64),
        V::I(0),
        V::I(-1),
        V::I(typmod(field.data_type()) as i64),
        V::B(matches!(len, 1 | 2 | 4 | 8)),
        t(align(len)),
        t(if len > 0 { "p" } else { "x" }),
        t(""),
        V::B(!field.is_nullable()),
        V::B(false),
        V::B(false),
        t(""),
        t(""),
        V::B(false),
        V::B(true),
        V::I(0),
        V::O(collation),
        V::Null,
        V::Null,
        V::Null,
    ]
}

fn align(len: i16) -> &'static str {
    match len {
        1 => "c",
        2 => "s",
        8 => "d",
        _ => "i",
    }
}

fn type_rows() -> Vec<Vec<V>> {
    let mut rows = Vec::new();
    for (base, array, category) in TYPES {
        for (ty, elem, arr, category, is_array) in [
            (base, 0, array.oid(), *category, false),
            (array, base.oid(), 0, "A", true),
        ] {
            let len = if is_array { -1 } else { typlen(ty) };
            let collatable = !is_array && category == "S";
            rows.push(vec![
                V::O(ty.oid()),
                t(ty.name()),
                V::O(PG_CATALOG_OID),
                V::O(OWNER_OID),
                V::I(len as i64),
                V::B(matches!(len, 1 | 2 | 4 | 8)),
                t("b"),
                t(category),
                V::B(matches!(
                    ty.name(),
                    "bool" | "text" | "float8" | "timestamptz" | "oid"
                )),
                V::B(true),
                t(","),
                V::O(0),
                t(if is_array {
                    "array_subscript_handler"
                } else {
                    "-"
                }),
                V::O(elem),
                V::O(arr),
                t(io_function(ty, is_array, "in")),
                t(io_function(ty, is_array, "out")),
                t(io_function(ty, is_array, "recv")),
                t(io_function(ty, is_array, "send")),
                t("-"),
                t("-"),
                t("-"),
                t(align(len)),
                t(if len > 0 { "p" } else { "x" }),
                V::B(false),
                V::O(0),
                V::I(-1),
                V::I(0),
                V::O(if collatable { DEFAULT_COLLATION } else { 0 }),
                V::Null,
                V::Null,
                V::Null,
            ]);
        }
    }
    rows
}

/// Builds a one-batch memory table from typed columns and rows.
fn table(columns: Columns, rows: Vec<Vec<V>>) -> crate::Result<Arc<dyn TableProvider>> {
    let schema: SchemaRef = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, col)| {
                let field = Field::new(*name, arrow_type(*col), true);
                match col {
                    Col::Char => {
                        field.with_metadata([(PG_TYPE_KEY.to_string(), "char".to_string())].into())
                    }
                    _ => field,
                }
            })
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, col))| column(*col, rows.iter().map(|r| &r[i])))
        .collect();
    let batch =
        RecordBatch::try_new(schema.clone(), arrays).map_err(|source| crate::Error::Render {
            format: "pg_catalog",
            source,
        })?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn arrow_type(col: Col) -> DataType {
    match col {
        Col::Oid => DataType::UInt32,
        Col::Text | Col::Char => DataType::Utf8,
        Col::I2 => DataType::Int16,
        Col::I4 => DataType::Int32,
        Col::I8 => DataType::Int64,
        Col::F4 => DataType::Float32,
        Col::Bool => DataType::Boolean,
        Col::TextArray => DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
        Col::I2Array => DataType::List(Arc::new(Field::new_list_field(DataType::Int16, true))),
    }
}

fn column<'a>(col: Col, values: impl Iterator<Item = &'a V>) -> ArrayRef {
    let int = |v: &V| match v {
        V::I(i) => Some(*i),
        _ => None,
    };
    match col {
        Col::Oid => Arc::new(
            values
                .map(|v| match v {
                    V::O(o) => Some(*o),
                    _ => None,
                })
                .collect::<UInt32Array>(),
        ),
        Col::Text | Col::Char => Arc::new(
            values
                .map(|v| match v {
                    V::T(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<StringArray>(),
        ),
        Col::I2 => Arc::new(
            values
                .map(|v| int(v).map(|i| i as i16))
                .collect::<Int16Array>(),
        ),
        Col::I4 => Arc::new(
            values
                .map(|v| int(v).map(|i| i as i32))
                .collect::<Int32Array>(),
        ),
        Col::I8 => Arc::new(values.map(int).collect::<Int64Array>()),
        Col::F4 => Arc::new(
            values
                .map(|v| match v {
                    V::F(f) => Some(*f),
                    _ => None,
                })
                .collect::<Float32Array>(),
        ),
        Col::Bool => Arc::new(
            values
                .map(|v| match v {
                    V::B(b) => Some(*b),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        // No ACLs or options in the lake: always null.
        Col::TextArray => Arc::new(ListArray::new_null(
            Arc::new(Field::new_list_field(DataType::Utf8, true)),
            values.count(),
        )),
        Col::I2Array => Arc::new(ListArray::new_null(
            Arc::new(Field::new_list_field(DataType::Int16, true)),
            values.count(),
        )),
    }
}

// `SchemaProvider` is declared with `async_trait`; `table` is written out in
// the form that macro expands to (as in `lake_schema`).
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        FILLED
            .iter()
            .copied()
            .chain(EMPTY.iter().map(|(n, _)| *n))
            .map(String::from)
            .collect()
    }

    fn table<'life0, 'life1, 'async_trait>(
        &'life0 self,
        name: &'life1 str,
    ) -> BoxFuture<'async_trait, DfResult<Option<Arc<dyn TableProvider>>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.build(name)
                .await
                .map_err(crate::Error::into_datafusion)
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        is_catalog_table(name)
    }
}

/// Registers the schema and the catalog functions on `ctx`.
pub(crate) fn register(
    ctx: &SessionContext,
    layers: Vec<Arc<LakeSchema>>,
    identity: Identity,
) -> crate::Result<()> {
    let catalog = ctx
        .catalog(crate::session::CATALOG)
        .ok_or_else(|| crate::Error::Server("the lake catalog is not registered".into()))?;
    for f in functions(&identity) {
        ctx.register_udf(ScalarUDF::new_from_impl(f));
    }
    catalog.register_schema("pg_catalog", Arc::new(PgCatalog::new(layers, identity)))?;
    Ok(())
}

/// What a catalog function computes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Body {
    /// The same value for every row (`version()`, `pg_table_is_visible`:
    /// every lake table is readable; `obj_description`: no comments).
    Constant(ScalarValue),
    /// `format_type(oid, typmod)`.
    FormatType,
    /// `current_schemas(include_implicit)`.
    CurrentSchemas,
    /// `to_regtype(name)`: the oid of a type name, NULL when unknown.
    ToRegtype,
    /// `regtype(x)`: a column cast to `regtype` (see `rewrite.rs`), the
    /// same oid as `oid`.
    Oid,
    /// `json_build_object(k1, v1, ...)`: a JSON object as text.
    JsonObject,
    /// `regclass(name)`: a table name that is not a literal (a parameter)
    /// as its oid: catalog tables by name, lake tables when qualified.
    Regclass,
    /// `current_setting(name [, missing_ok])`: a setting's value (the
    /// settings are fixed when the server starts).
    CurrentSetting(Vec<(String, String)>),
    /// `set_config(name, value, is_local)`: the value, accepted and
    /// ignored like `SET`.
    SetConfig,
    /// `like_escape(pattern, escape)`: a LIKE pattern written with another
    /// escape character, rewritten to DataFusion's backslash.
    LikeEscape,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PgFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    body: Body,
}

fn functions(identity: &Identity) -> Vec<PgFunction> {
    let any = || {
        Signature::one_of(
            vec![TypeSignature::Nullary, TypeSignature::VariadicAny],
            Volatility::Stable,
        )
    };
    let constant = |name, value: ScalarValue| PgFunction {
        name,
        signature: any(),
        returns: value.data_type(),
        body: Body::Constant(value),
    };
    let text = |v: &str| ScalarValue::Utf8(Some(v.to_string()));
    let none = ScalarValue::Utf8(None);
    let yes = ScalarValue::Boolean(Some(true));
    let mut out = vec![
        constant(
            "version",
            text(&format!(
                "PostgreSQL {SERVER_VERSION} (tributary {}) on x86_64-pc-linux-gnu, a read-only server over a Delta lake",
                env!("CARGO_PKG_VERSION")
            )),
        ),
        constant("current_schema", text(SEARCH_PATH[0])),
        constant("current_database", text(&identity.database)),
        constant("current_catalog", text(&identity.database)),
        constant("current_user", text(&identity.user)),
        constant("session_user", text(&identity.user)),
        constant("current_role", text(&identity.user)),
        constant("pg_get_userbyid", text(&identity.user)),
        constant("pg_encoding_to_char", text("UTF8")),
        constant(
            "pg_backend_pid",
            ScalarValue::Int32(Some(std::process::id() as i32)),
        ),
        constant("pg_is_in_recovery", ScalarValue::Boolean(Some(false))),
        PgFunction {
            name: "format_type",
            signature: Signature::any(2, Volatility::Immutable),
            returns: DataType::Utf8,
            body: Body::FormatType,
        },
        PgFunction {
            name: "to_regtype",
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Stable),
            returns: DataType::UInt32,
            body: Body::ToRegtype,
        },
        PgFunction {
            name: "regtype",
            signature: Signature::any(1, Volatility::Immutable),
            returns: DataType::UInt32,
            body: Body::Oid,
        },
        PgFunction {
            name: "json_build_object",
            signature: any(),
            returns: DataType::Utf8,
            body: Body::JsonObject,
        },
        PgFunction {
            name: "regclass",
            signature: Signature::any(1, Volatility::Stable),
            returns: DataType::UInt32,
            body: Body::Regclass,
        },
        PgFunction {
            name: "current_setting",
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Stable,
            ),
            returns: DataType::Utf8,
            body: Body::CurrentSetting(
                identity
                    .settings
                    .iter()
                    .map(|s| (s.name.to_string(), s.value.clone()))
                    .collect(),
            ),
        },
        PgFunction {
            name: "set_config",
            signature: Signature::any(3, Volatility::Volatile),
            returns: DataType::Utf8,
            body: Body::SetConfig,
        },
        PgFunction {
            name: "like_escape",
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8],
                Volatility::Immutable,
            ),
            returns: DataType::Utf8,
            body: Body::LikeEscape,
        },
        PgFunction {
            name: "current_schemas",
            signature: Signature::any(1, Volatility::Stable),
            returns: DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            body: Body::CurrentSchemas,
        },
    ];
    for name in [
        "pg_table_is_visible",
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_collation_is_visible",
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_column_privilege",
        "has_any_column_privilege",
    ] {
        out.push(constant(name, yes.clone()));
    }
    out.push(constant(
        "pg_relation_is_publishable",
        ScalarValue::Boolean(Some(false)),
    ));
    for name in [
        "pg_get_expr",
        "obj_description",
        "col_description",
        "shobj_description",
        "pg_get_indexdef",
        "pg_get_constraintdef",
        "pg_get_viewdef",
        "pg_get_triggerdef",
        "pg_get_partkeydef",
        "pg_get_serial_sequence",
        "pg_get_statisticsobjdef_columns",
        "pg_get_function_identity_arguments",
        "pg_get_function_result",
    ] {
        out.push(constant(name, none.clone()));
    }
    out
}

impl ScalarUDFImpl for PgFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match &self.body {
            Body::Constant(value) => Ok(ColumnarValue::Scalar(value.clone())),
            Body::CurrentSchemas => {
                let implicit = matches!(
                    args.args.first(),
                    Some(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))
                );
                let names = implicit
                    .then_some("pg_catalog")
                    .into_iter()
                    .chain(SEARCH_PATH)
                    .map(|s| ScalarValue::Utf8(Some(s.to_string())))
                    .collect::<Vec<_>>();
                Ok(ColumnarValue::Scalar(ScalarValue::List(
                    ScalarValue::new_list_nullable(&names, &DataType::Utf8),
                )))
            }
            Body::ToRegtype => {
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                let names = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
                let names = names.as_string::<i32>();
                let out: UInt32Array = names
                    .iter()
                    .map(|n| n.and_then(type_by_name).map(|t| t.oid()))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            Body::Oid => {
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                Ok(ColumnarValue::Array(arrow::compute::cast(
                    &arrays[0],
                    &DataType::UInt32,
                )?))
            }
            Body::JsonObject => {
                let rows = args.number_rows;
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                let mut texts = Vec::with_capacity(arrays.len());
                for a in &arrays {
                    texts.push(arrow::compute::cast(a, &DataType::Utf8)?);
                }
                let out: StringArray = (0..rows)
                    .map(|row| {
                        let mut object = serde_json::Map::new();
                        for pair in arrays.chunks(2).zip(texts.chunks(2)) {
                            let ([key, value], [key_text, value_text]) = pair else {
                                continue;
                            };
                            if key.is_null(row) {
                                continue;
                            }
                            let k = key_text.as_string::<i32>().value(row).to_string();
                            object.insert(k, json_value(value, value_text, row));
                        }
                        Some(serde_json::Value::Object(object).to_string())
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            Body::Regclass => {
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                if arrays[0].data_type().is_integer() {
                    return Ok(ColumnarValue::Array(arrow::compute::cast(
                        &arrays[0],
                        &DataType::UInt32,
                    )?));
                }
                let names = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
                let out: UInt32Array = names
                    .as_string::<i32>()
                    .iter()
                    .map(|n| n.and_then(regclass_by_name))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            Body::CurrentSetting(settings) => {
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                let names = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
                let missing_ok = arrays.get(1).map(|a| a.as_boolean().clone());
                let mut out = arrow::array::StringBuilder::new();
                for (row, name) in names.as_string::<i32>().iter().enumerate() {
                    let Some(name) = name else {
                        out.append_null();
                        continue;
                    };
                    match settings.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                        Some((_, value)) => out.append_value(value),
                        None if missing_ok.as_ref().is_some_and(|m| m.value(row)) => {
                            out.append_null()
                        }
                        None => {
                            return Err(DataFusionError::Plan(format!(
                                "unrecognized configuration parameter \"{name}\""
                            )));
                        }
                    }
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish())))
            }
            Body::SetConfig => {
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                Ok(ColumnarValue::Array(arrow::compute::cast(
                    &arrays[1],
                    &DataType::Utf8,
                )?))
            }
            Body::LikeEscape => {
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                let patterns = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
                let escapes = arrow::compute::cast(&arrays[1], &DataType::Utf8)?;
                let out: StringArray = patterns
                    .as_string::<i32>()
                    .iter()
                    .zip(escapes.as_string::<i32>().iter())
                    .map(|(p, e)| {
                        let escape = e.and_then(|e| e.chars().next());
                        p.map(|p| backslash_pattern(p, escape))
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            Body::FormatType => {
                let rows = args.number_rows;
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                let as_i64 = |a: &ArrayRef| arrow::compute::cast(a, &DataType::Int64);
                let oids = as_i64(&arrays[0])?;
                let mods = as_i64(&arrays[1])?;
                let oids = oids
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| DataFusionError::Internal("format_type oid".into()))?;
                let mods = mods
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| DataFusionError::Internal("format_type typmod".into()))?;
                let out: StringArray = (0..rows)
                    .map(|i| {
                        if oids.is_null(i) {
                            return None;
                        }
                        let typmod = if mods.is_null(i) { -1 } else { mods.value(i) };
                        Some(format_oid(oids.value(i) as u32, typmod as i32))
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
        }
    }
}

/// One value of a `json_build_object` argument: numbers and booleans as
/// themselves, everything else as its text.
fn json_value(array: &ArrayRef, text: &ArrayRef, row: usize) -> serde_json::Value {
    if array.is_null(row) {
        return serde_json::Value::Null;
    }
    let text = text.as_string::<i32>().value(row);
    match array.data_type() {
        DataType::Boolean => serde_json::Value::Bool(text == "true"),
        t if t.is_numeric() => text
            .parse::<serde_json::Number>()
            .map(serde_json::Value::Number)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_string())),
        _ => serde_json::Value::String(text.to_string()),
    }
}

/// The oid of a table named at run time: `pg_catalog.x` and `pg_x` are
/// catalog tables, `layer.table` a lake table (its oid is a hash of the
/// name, so no listing is needed; a table that does not exist has an oid
/// that matches no `pg_class` row).
fn regclass_by_name(name: &str) -> Option<u32> {
    let plain = name.replace('"', "");
    match plain.split_once('.') {
        Some(("pg_catalog", table)) => catalog_table_oid(table),
        Some((layer, table)) => Some(table_oid(layer, table)),
        None => catalog_table_oid(&plain),
    }
}

/// A LIKE pattern that escapes with `escape`, rewritten to escape with a
/// backslash: `escape` followed by a character is that character taken
/// literally, and a backslash of the pattern is a literal backslash.
pub(crate) fn backslash_pattern(pattern: &str, escape: Option<char>) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            if let Some(next) = chars.next() {
                out.push('\\');
                out.push(next);
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// `format_type`: the SQL name of a type oid with its modifier.
pub(crate) fn format_oid(oid: u32, typmod: i32) -> String {
    let Some(ty) = Type::from_oid(oid) else {
        return "???".into();
    };
    if let Some((elem, _, _)) = TYPES.iter().find(|(_, array, _)| *array == ty) {
        return format!("{}[]", format_oid(elem.oid(), typmod));
    }
    if ty == Type::NUMERIC && typmod >= 4 {
        let packed = typmod - 4;
        return format!("numeric({},{})", packed >> 16, packed & 0xffff);
    }
    match ty {
        Type::CHAR => "\"char\"".into(),
        Type::VARCHAR => "character varying".into(),
        Type::BPCHAR => "character".into(),
        Type::TIME => "time without time zone".into(),
        other => match arrow_of(&other) {
            Some(data_type) => format_type(&data_type),
            None => other.name().to_string(),
        },
    }
}

/// An Arrow type that [`format_type`] names like PostgreSQL does.
fn arrow_of(ty: &Type) -> Option<DataType> {
    super::encode::arrow_type(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_take_a_backslash_escape() {
        assert_eq!(backslash_pattern("pg/_%", Some('/')), "pg\\_%");
        assert_eq!(backslash_pattern("a//b\\c", Some('/')), "a\\/b\\\\c");
        assert_eq!(backslash_pattern("x_%", None), "x_%");
    }

    #[test]
    fn types_are_found_and_formatted() {
        assert_eq!(type_by_name("integer"), Some(Type::INT4));
        assert_eq!(type_by_name("text[]"), Some(Type::TEXT_ARRAY));
        assert_eq!(type_by_name("pg_catalog.int8"), Some(Type::INT8));
        assert_eq!(type_by_name("nope"), None);
        assert_eq!(format_oid(20, -1), "bigint");
        assert_eq!(format_oid(1700, (12 << 16 | 2) + 4), "numeric(12,2)");
        assert_eq!(format_oid(1184, -1), "timestamp with time zone");
        assert_eq!(format_oid(1009, -1), "text[]");
        assert_eq!(format_oid(25, -1), "text");
    }

    #[test]
    fn every_type_row_has_every_column_and_arrays_point_back() {
        let rows = type_rows();
        assert!(rows.iter().all(|r| r.len() == TYPE.len()));
        let int8 = rows
            .iter()
            .find(|r| matches!(&r[1], V::T(n) if n == "_int8"))
            .unwrap();
        assert!(matches!(int8[13], V::O(20)));
        assert!(matches!(&int8[15], V::T(f) if f == "array_in"));
        assert!(table(TYPE, rows).is_ok());
        assert!(table(CLASS, vec![class_row(16_400, 16_001, "orders".into())]).is_ok());
    }
}
