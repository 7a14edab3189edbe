//! The one async runtime. dbimage is synchronous; the few libraries that are
//! async only (reqwest's client that keeps early error replies, the openssh
//! session) run their futures here, on one small current-thread runtime.

use std::future::Future;
use std::sync::OnceLock;

/// Runs `fut` to completion on the shared runtime. Build futures inside an
/// `async` block: some clients need the runtime when a request is created.
pub fn block_on<F: Future>(fut: F) -> std::io::Result<F::Output> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().ok());
    match rt {
        Some(rt) => Ok(rt.block_on(fut)),
        None => Err(std::io::Error::other("cannot start the async runtime")),
    }
}
