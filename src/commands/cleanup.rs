//! `dbimage cleanup`: undo what a killed build left behind.

use crate::disk::guard;
use crate::settings::Settings;

/// Replays every state file under the work directory whose build is gone.
pub fn run() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let dir = &settings.work_dir;
    let Ok(entries) = std::fs::read_dir(dir) else {
        println!("nothing to clean up ({} does not exist)", dir.display());
        return Ok(());
    };
    let mut cleaned = 0;
    let mut failed = Vec::new();
    for entry in entries.flatten() {
        let state = entry.path().join("state.json");
        if !state.is_file() {
            continue;
        }
        match guard::replay_state_file(&state) {
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
