//! `dbimage worker`: run jobs from the build farm's queue.

use crate::cli::WorkerArgs;
use crate::queue::worker::{self, Options};
use crate::settings::Settings;

/// Runs `dbimage worker`.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let opts = Options { concurrency: usize::from(args.concurrency), log_dir: args.log_dir, drain: args.drain };
    worker::run(settings.queue.as_ref(), &opts)
}
