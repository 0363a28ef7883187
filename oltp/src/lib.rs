//! Order and catalog services of tributary: the OLTP side of the platform.
//!
//! This crate owns the sharded order service (HTTP, axum), the catalog
//! service, the shard map and its placement strategies ([`Router`]), the
//! versioned schema migrations of every database ([`migrate`]), the
//! service's request metrics ([`metrics`], served as `/metrics`) and the load
//! generator ([`run_load`]) that drives realistic traffic through the API,
//! and the product cache ([`cache`]: Redis, invalidated by the change stream).
//!
//! Seams other crates rely on:
//! - the table names and column types created by [`migrate`] are the contract
//!   of the CDC reader, the lake and the marts;
//! - ids of orders, order items, payments and shipments are unique across
//!   shards and carry their shard: [`shard_of_id`] recovers it;
//! - the metric names in [`metrics`] are what dashboards read.
//!
//! ```no_run
//! # async fn demo() -> tributary_oltp::Result<()> {
//! use tributary_oltp::{OltpConfig, Server, Topology};
//! use tokio_util::sync::CancellationToken;
//!
//! let topology = Topology {
//!     shards: vec!["host=127.0.0.1 port=5433 user=tributary dbname=orders".into()],
//!     catalog: "host=127.0.0.1 port=5432 user=tributary dbname=catalog".into(),
//!     replicas: vec![],
//! };
//! let config: OltpConfig = serde_json::from_str("{}").expect("defaults are valid");
//! let server = Server::bind(config, topology).await?;
//! server.run(CancellationToken::new()).await
//! # }
//! ```

mod api;
pub mod cache;
mod clickstream;
mod config;
mod error;
mod load;
pub mod metrics;
mod migrate;
mod money;
mod pool;
mod replica;
mod routing;

pub use api::Server;
pub use api::trace;
pub use config::{CacheConfig, GeoPoint, OltpConfig, ShardingConfig, StrategyKind, Topology};
pub use error::{Error, Result};
pub use load::{LoadConfig, LoadReport, run_load};
pub use migrate::{migrate, migrate_to};
pub use routing::{MAX_SHARDS, Placement, Router, shard_of_id};
