//! `dbimage test`. (Being written.)
/// Runs `dbimage test`.
pub fn run(_args: crate::cli::TestArgs) -> anyhow::Result<()> { anyhow::bail!("not yet") }
