//! `dbimage datastores`. (Being written.)
/// Runs `dbimage datastores`.
pub fn run(_args: crate::cli::DatastoresArgs) -> anyhow::Result<()> { anyhow::bail!("not yet") }
