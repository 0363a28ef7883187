//! A DataFusion schema over one lake layer.

use std::sync::{Arc, RwLock};

use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::Result as DfResult;
use futures::future::BoxFuture;
use tributary_lake::Lake;

/// The Delta tables of one layer, opened on demand.
///
/// `table()` opens the table at its latest version on every call, so each
/// query plans against the newest commit. Listing is async in the lake but
/// `table_names()` is sync in DataFusion, so names come from a cache that the
/// session refreshes before each statement.
#[derive(Debug)]
pub(crate) struct LakeSchema {
    lake: Lake,
    layer: &'static str,
    names: RwLock<Vec<String>>,
}

impl LakeSchema {
    pub(crate) fn new(lake: Lake, layer: &'static str) -> Self {
        LakeSchema {
            lake,
            layer,
            names: RwLock::new(Vec::new()),
        }
    }

    pub(crate) fn layer(&self) -> &'static str {
        self.layer
    }

    /// Re-lists the layer's tables from the store.
    pub(crate) async fn refresh(&self) -> crate::Result<Vec<String>> {
        let names = self.lake.list_tables(self.layer).await?;
        // A poisoned lock only means another reader panicked mid-swap of a
        // plain Vec; the data is still a valid list, so keep going.
        let mut cache = self.names.write().unwrap_or_else(|e| e.into_inner());
        cache.clone_from(&names);
        Ok(names)
    }

    /// Opens `name` at its latest version; `None` when there is no such table.
    pub(crate) async fn open(&self, name: &str) -> crate::Result<Option<Arc<dyn TableProvider>>> {
        // Names become path segments; anything else could leave the layer.
        if !is_plain_name(name) {
            return Ok(None);
        }
        // `Lake::open` reports a missing folder as an error rather than
        // `None`, so ask the listing first; an absent table is "not found".
        if !self.refresh().await?.iter().any(|n| n == name) {
            return Ok(None);
        }
        let Some(table) = self.lake.open(self.layer, name).await? else {
            return Ok(None);
        };
        tracing::debug!(layer = self.layer, table = name, version = ?table.version(), "opened table");
        if let Some(version) = table.version() {
            let _ = crate::result_cache::READS.try_with(|reads| {
                reads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(crate::result_cache::Read {
                        layer: self.layer,
                        table: name.to_string(),
                        version,
                    })
            });
        }
        let provider = table.table_provider().await?;
        Ok(Some(provider))
    }
}

// `SchemaProvider` is declared with `async_trait`; `table` is written out in
// the form that macro expands to, which saves a dependency for one method.
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        self.names.read().unwrap_or_else(|e| e.into_inner()).clone()
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
        Box::pin(async move { self.open(name).await.map_err(crate::Error::into_datafusion) })
    }

    fn table_exist(&self, name: &str) -> bool {
        self.names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|n| n == name)
    }
}

/// Table names the lake can hold: ASCII letters, digits and `_`.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_reach_the_store() {
        assert!(is_plain_name("order_items"));
        assert!(!is_plain_name("../gold/x"));
        assert!(!is_plain_name("a/b"));
        assert!(!is_plain_name(""));
    }
}
