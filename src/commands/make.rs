//! `dbimage make`. (Being written.)
/// Runs `dbimage make`.
pub fn run(_args: crate::cli::MakeArgs) -> anyhow::Result<()> { anyhow::bail!("not yet") }
