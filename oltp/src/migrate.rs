//! Versioned schema migrations of the catalog and of every shard.
//!
//! Each database keeps `schema_migrations(version, applied_at)`. Every
//! migration runs in its own transaction that first takes a transaction-scoped
//! advisory lock, so services starting together apply each version exactly
//! once, and a failed migration leaves no trace.

use tokio_postgres::Client;

use crate::config::Topology;
use crate::error::{Error, Result};
use crate::pool::connect;
use crate::routing::MAX_SHARDS;

/// Key of the advisory lock that serialises migrations ("tributary" in ASCII).
const MIGRATION_LOCK: i64 = 0x7472_6962_7574_6172;

struct Migration {
    version: i32,
    name: &'static str,
    /// SQL text; in shard migrations `{shard}` and `{start}` are replaced by
    /// the shard index and the first id of its sequences.
    sql: &'static str,
}

const CATALOG: &[Migration] = &[
    Migration {
        version: 1,
        name: "catalog tables",
        sql: r#"
CREATE SEQUENCE products_id_seq AS bigint;
CREATE TABLE products (
    id bigint PRIMARY KEY DEFAULT nextval('products_id_seq'),
    sku text NOT NULL UNIQUE,
    name text NOT NULL,
    category text NOT NULL,
    price numeric(12,2) NOT NULL CHECK (price >= 0),
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE products_id_seq OWNED BY products.id;

CREATE SEQUENCE price_changes_id_seq AS bigint;
CREATE TABLE price_changes (
    id bigint PRIMARY KEY DEFAULT nextval('price_changes_id_seq'),
    product_id bigint NOT NULL REFERENCES products(id),
    old_price numeric(12,2),
    new_price numeric(12,2) NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE price_changes_id_seq OWNED BY price_changes.id;
CREATE INDEX price_changes_product_id_idx ON price_changes (product_id);

CREATE SEQUENCE customer_ids AS bigint;
CREATE TABLE customer_directory (
    customer_id bigint PRIMARY KEY,
    shard int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"#,
    },
    Migration {
        version: 2,
        name: "product versions",
        // The product cache orders a product's states by `version`: a row
        // read from the database and a change from the stream compare on
        // it (a commit position cannot be read with a row without a race).
        // The trigger bumps it on every update, whoever writes.
        sql: r#"
ALTER TABLE products ADD COLUMN version bigint NOT NULL DEFAULT 1;
CREATE FUNCTION products_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;
CREATE TRIGGER products_version BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION products_bump_version();
"#,
    },
];

const SHARD: &[Migration] = &[
    Migration {
        version: 1,
        name: "order tables",
        sql: r#"
CREATE TABLE shard_meta (shard int PRIMARY KEY);
INSERT INTO shard_meta (shard) VALUES ({shard});

CREATE TABLE customers (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    region text NOT NULL,
    country text NOT NULL,
    city text NOT NULL,
    address text NOT NULL,
    lat double precision NOT NULL,
    lon double precision NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE orders_id_seq AS bigint START WITH {start} INCREMENT BY 1024;
CREATE TABLE orders (
    id bigint PRIMARY KEY DEFAULT nextval('orders_id_seq'),
    customer_id bigint NOT NULL REFERENCES customers(id),
    status text NOT NULL CHECK (status IN ('pending','paid','shipped','delivered','cancelled','refunded')),
    currency text NOT NULL DEFAULT 'USD',
    total numeric(12,2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE orders_id_seq OWNED BY orders.id;
CREATE INDEX orders_customer_id_idx ON orders (customer_id);

CREATE SEQUENCE order_items_id_seq AS bigint START WITH {start} INCREMENT BY 1024;
CREATE TABLE order_items (
    id bigint PRIMARY KEY DEFAULT nextval('order_items_id_seq'),
    order_id bigint NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    product_id bigint NOT NULL,
    quantity int NOT NULL CHECK (quantity > 0),
    unit_price numeric(12,2) NOT NULL,
    line_total numeric(12,2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE order_items_id_seq OWNED BY order_items.id;
CREATE INDEX order_items_order_id_idx ON order_items (order_id);

CREATE SEQUENCE payments_id_seq AS bigint START WITH {start} INCREMENT BY 1024;
CREATE TABLE payments (
    id bigint PRIMARY KEY DEFAULT nextval('payments_id_seq'),
    order_id bigint NOT NULL REFERENCES orders(id),
    amount numeric(12,2) NOT NULL,
    method text NOT NULL,
    status text NOT NULL CHECK (status IN ('captured','refunded')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE payments_id_seq OWNED BY payments.id;
CREATE INDEX payments_order_id_idx ON payments (order_id);

CREATE SEQUENCE shipments_id_seq AS bigint START WITH {start} INCREMENT BY 1024;
CREATE TABLE shipments (
    id bigint PRIMARY KEY DEFAULT nextval('shipments_id_seq'),
    order_id bigint NOT NULL REFERENCES orders(id),
    carrier text NOT NULL,
    status text NOT NULL CHECK (status IN ('shipped','delivered')),
    shipped_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE shipments_id_seq OWNED BY shipments.id;
CREATE INDEX shipments_order_id_idx ON shipments (order_id);

CREATE TABLE idempotency_keys (
    key text PRIMARY KEY,
    customer_id bigint NOT NULL,
    request_hash text NOT NULL,
    order_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"#,
    },
    // Additive only: every new column is nullable, so rows written before
    // and clients that do not send the new fields stay valid.
    Migration {
        version: 2,
        name: "fraud signals and the outbox",
        sql: r#"
ALTER TABLE orders
    ADD COLUMN device_id text,
    ADD COLUMN billing_country text,
    ADD COLUMN shipping_country text;

ALTER TABLE payments
    ADD COLUMN customer_id bigint,
    ADD COLUMN card_fingerprint text,
    DROP CONSTRAINT payments_status_check,
    ADD CONSTRAINT payments_status_check CHECK (status IN ('captured','refunded','failed'));
CREATE INDEX payments_customer_id_idx ON payments (customer_id);

-- Business events, written in the transaction of what they describe; CDC
-- carries them. `payload` is a JSON document stored as text (checked to
-- parse): the lake keeps JSON columns as text, and text round-trips exactly.
CREATE SEQUENCE outbox_id_seq AS bigint START WITH {start} INCREMENT BY 1024;
CREATE TABLE outbox (
    id bigint PRIMARY KEY DEFAULT nextval('outbox_id_seq'),
    customer_id bigint NOT NULL,
    event_type text NOT NULL,
    payload text NOT NULL CHECK (payload::jsonb IS NOT NULL),
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE outbox_id_seq OWNED BY outbox.id;
"#,
    },
];

/// Brings the catalog and every shard up to the latest schema version.
///
/// Idempotent and safe to run from several processes at once. Fails when a
/// shard database was initialised as a different shard index than its
/// position in `topology.shards`, since its ids would then collide.
pub async fn migrate(topology: &Topology) -> Result<()> {
    migrate_to(topology, i32::MAX).await
}

/// Like [`migrate`], but applies no version above `version`: the schema an
/// older release left, for testing upgrades.
pub async fn migrate_to(topology: &Topology, version: i32) -> Result<()> {
    if topology.shards.is_empty() || topology.shards.len() > MAX_SHARDS {
        return Err(Error::Config {
            field: "oltp.shards",
            reason: format!(
                "need between 1 and {MAX_SHARDS} shards, got {}",
                topology.shards.len()
            ),
        });
    }
    let mut catalog = connect(&topology.catalog, "catalog").await?;
    let upto = |list: &'static [Migration]| {
        let n = list.iter().take_while(|m| m.version <= version).count();
        &list[..n]
    };
    apply(&mut catalog, "catalog", upto(CATALOG), None).await?;
    for (index, dsn) in topology.shards.iter().enumerate() {
        let label = format!("shard{index}");
        let mut client = connect(dsn, &label).await?;
        apply(&mut client, &label, upto(SHARD), Some(index)).await?;
        let recorded: i32 = client
            .query_one("SELECT shard FROM shard_meta", &[])
            .await?
            .get(0);
        if recorded as usize != index {
            return Err(Error::Config {
                field: "oltp.shards",
                reason: format!(
                    "database at position {index} was initialised as shard {recorded}; the shard list must keep its order"
                ),
            });
        }
    }
    Ok(())
}

async fn apply(
    client: &mut Client,
    database: &str,
    migrations: &[Migration],
    shard: Option<usize>,
) -> Result<()> {
    for m in migrations {
        let failed = |source| Error::Migration {
            database: database.to_owned(),
            version: m.version,
            source,
        };
        let tx = client.transaction().await.map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(failed)?;
        // Created under the lock: concurrent `CREATE TABLE IF NOT EXISTS` can
        // still collide on the catalog's unique indexes.
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version int PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(failed)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await
            .map_err(failed)?
            .is_some();
        if done {
            tx.commit().await.map_err(failed)?;
            continue;
        }
        tx.batch_execute(&render(m.sql, shard))
            .await
            .map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&m.version],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            database,
            version = m.version,
            name = m.name,
            "applied migration"
        );
    }
    Ok(())
}

fn render(sql: &str, shard: Option<usize>) -> String {
    match shard {
        Some(i) => sql
            .replace("{shard}", &i.to_string())
            .replace("{start}", &(i + 1).to_string()),
        None => sql.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ascending_and_unique() {
        for list in [CATALOG, SHARD] {
            assert!(list.windows(2).all(|w| w[0].version < w[1].version));
            assert!(list.first().is_some_and(|m| m.version == 1));
        }
    }

    #[test]
    fn shard_sql_carries_the_index() {
        let sql = render(SHARD[0].sql, Some(3));
        assert!(sql.contains("VALUES (3)"));
        assert!(sql.contains("orders_id_seq AS bigint START WITH 4 INCREMENT BY 1024"));
        assert!(!sql.contains("{start}") && !sql.contains("{shard}"));
        let v2 = render(SHARD[1].sql, Some(3));
        assert!(v2.contains("outbox_id_seq AS bigint START WITH 4 INCREMENT BY 1024"));
        assert_eq!(render("a {shard}", None), "a {shard}");
    }
}
