//! `dbimage cleanup`: undo what a killed build left behind.

use anyhow::Context;

use crate::commands::UsageError;
use crate::disk::guard;
use crate::settings::Settings;

/// Replays every state file under the work directory whose build is gone.
/// A work directory someone else could write is refused whole: its state
/// files may be planted.
pub fn run() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let dir = &settings.work_dir;
    if dir.symlink_metadata().is_err() {
        println!("nothing to clean up ({} does not exist)", dir.display());
        return Ok(());
    }
    crate::settings::check_work_dir(dir).map_err(|e| UsageError(e.to_string()))?;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut cleaned = 0;
    let mut failed = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let state = entry.path().join("state.json");
        if !state.symlink_metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        match guard::replay_state_file(&state, dir) {
            Ok(undone) => {
                cleaned += 1;
                println!("{}: undid {} step(s)", entry.path().display(), undone.len());
            }
            Err(e) => failed.push(e),
        }
    }
    if cleaned == 0 && failed.is_empty() {
        println!("nothing to clean up in {}", dir.display());
    }
    if let Some(first) = failed.first() {
        anyhow::bail!("{first} ({} build(s) not cleaned)", failed.len());
    }
    Ok(())
}
