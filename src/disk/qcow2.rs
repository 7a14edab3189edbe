//! A disk image (raw, or any format qemu-img reads) to compressed QCOW2,
//! with a byte counter while it runs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::cli::Compression;
use crate::run::{Cmd, RunError};

/// Converts `src`, of qemu's `format` (`raw`, `vmdk`, …), to a compressed
/// QCOW2 at `out`; `src` is only read.
pub fn convert(src: &Path, format: &str, out: &Path, compression: Compression) -> Result<(), RunError> {
    let opts = match compression {
        Compression::Zlib => "compression_type=zlib",
        Compression::Zstd => "compression_type=zstd",
    };
    let cmd = Cmd::new("qemu-img")
        .args(["convert", "-c", "-f", format, "-O", "qcow2", "-o", opts])
        .arg(src)
        .arg(out);

    let done = Arc::new(AtomicBool::new(false));
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("  {spinner} convert: {msg} written").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let watcher = {
        let done = Arc::clone(&done);
        let out = out.to_path_buf();
        let bar = bar.clone();
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
                bar.set_message(HumanBytes(size).to_string());
                bar.tick();
                thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let result = cmd.run();
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    bar.finish_and_clear();
    result
}
