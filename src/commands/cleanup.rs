//! `dbimage cleanup`. (Being written.)
/// Runs `dbimage cleanup`.
pub fn run() -> anyhow::Result<()> { anyhow::bail!("not yet") }
