//! Loading `datastores/*.yaml` and resolving requests. (Being written.)

use std::path::Path;

use super::{DbRequest, Resolved};

/// Errors loading or resolving the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Placeholder.
    #[error("catalog not implemented yet")]
    Todo,
}

/// All datastores.
#[derive(Debug)]
pub struct Catalog;

impl Catalog {
    /// Loads every `*.yaml` in `dir`.
    pub fn load(_dir: &Path) -> Result<Catalog, CatalogError> {
        Err(CatalogError::Todo)
    }
    /// Resolves a request into one row.
    pub fn resolve(&self, _req: &DbRequest) -> Result<Resolved, CatalogError> {
        Err(CatalogError::Todo)
    }
}
