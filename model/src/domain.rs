//! The order domain: which tables exist where, and how topics and lake tables
//! are named.

/// A logical database. Shards of `orders` share the schema and the topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Database {
    /// The sharded order database (customers and everything they own).
    Orders,
    /// The single catalog database (products and prices).
    Catalog,
}

impl Database {
    pub fn name(self) -> &'static str {
        match self {
            Database::Orders => "orders",
            Database::Catalog => "catalog",
        }
    }
}

/// A replicated source table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub db: Database,
    pub name: &'static str,
    pub primary_key: &'static [&'static str],
}

/// Every table the pipeline replicates, in dependency order.
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        db: Database::Catalog,
        name: "products",
        primary_key: &["id"],
    },
    TableSpec {
        db: Database::Catalog,
        name: "price_changes",
        primary_key: &["id"],
    },
    TableSpec {
        db: Database::Orders,
        name: "customers",
        primary_key: &["id"],
    },
    TableSpec {
        db: Database::Orders,
        name: "orders",
        primary_key: &["id"],
    },
    TableSpec {
        db: Database::Orders,
        name: "order_items",
        primary_key: &["id"],
    },
    TableSpec {
        db: Database::Orders,
        name: "payments",
        primary_key: &["id"],
    },
    TableSpec {
        db: Database::Orders,
        name: "shipments",
        primary_key: &["id"],
    },
    // Business events written in the transaction of what they describe
    // (`order_placed`), so CDC carries them exactly as committed.
    TableSpec {
        db: Database::Orders,
        name: "outbox",
        primary_key: &["id"],
    },
];

/// The tables of one logical database.
pub fn tables_of(db: Database) -> impl Iterator<Item = &'static TableSpec> {
    TABLES.iter().filter(move |t| t.db == db)
}

/// Looks a table up by name (table names are unique across databases).
pub fn table(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}

/// The topic of a logical table: all shards of the table share it.
pub fn topic_name(prefix: &str, db: &str, table: &str) -> String {
    format!("{prefix}.{db}.{table}")
}

/// The replication slot of one source database's shard: `<prefix>_<db>_<shard>`.
/// The CDC reader creates it; anything that asks about a reader's progress
/// names the slot this way.
pub fn slot_name(prefix: &str, db: &str, shard: u32) -> String {
    format!("{prefix}_{db}_{shard}")
}

/// The topic of a table spec.
pub fn topic_of(prefix: &str, table: &TableSpec) -> String {
    topic_name(prefix, table.db.name(), table.name)
}

/// Lake layers; each is a schema in the SQL catalog.
pub const LAYERS: [&str; 3] = ["bronze", "silver", "gold"];

/// Names of the metadata columns silver adds to every source table.
pub mod silver_columns {
    /// Shard index the row lives on (part of the key).
    pub const SHARD: &str = "_shard";
    /// Commit LSN of the change that wrote the row.
    pub const LSN: &str = "_lsn";
    /// Ordinal of that change within its transaction.
    pub const ORDINAL: &str = "_ordinal";
    /// `event_id` of that change.
    pub const EVENT_ID: &str = "_event_id";
    /// Commit time of that change.
    pub const COMMIT_TS: &str = "_commit_ts";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_a_key_and_a_unique_name() {
        for t in TABLES {
            assert!(!t.primary_key.is_empty(), "{}", t.name);
            assert_eq!(table(t.name), Some(t));
        }
        assert_eq!(tables_of(Database::Catalog).count(), 2);
        assert_eq!(tables_of(Database::Orders).count(), 6);
        assert_eq!(table("outbox").map(|t| t.db), Some(Database::Orders));
        assert_eq!(
            topic_of("tributary", table("orders").unwrap()),
            "tributary.orders.orders"
        );
        assert_eq!(slot_name("tributary", "orders", 1), "tributary_orders_1");
    }
}
