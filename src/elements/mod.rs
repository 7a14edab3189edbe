//! DIB-format elements. (Being written.)

/// Errors in element discovery and resolution.
#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    /// Placeholder.
    #[error("elements not implemented yet")]
    Todo,
}
