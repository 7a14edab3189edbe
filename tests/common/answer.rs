//! Booting a built image with `dbimage test` and keeping what its database
//! said, for tests that check the answer itself (which server, which
//! architecture) rather than only that there was one.
//!
//! Not part of `common` (whose mod.rs another change owns): a test binary
//! includes it with `#[path = "common/answer.rs"] mod answer;`.

use std::path::Path;
use std::time::Instant;

use crate::common::{Scratch, run, waiting_for};

/// Boots `image` with `dbimage test --timeout SECS`, requires `db` to answer
/// within that time, checks the host is clean, and returns `dbimage test`'s
/// standard output (the "answered" line, then the probe's own output).
pub fn answer_within(scratch: &Scratch, image: &Path, db: &str, timeout_secs: u64) -> String {
    let mut c = scratch.cmd();
    c.arg("test").arg(image).args(["--timeout", &timeout_secs.to_string()]);
    let started = Instant::now();
    let out = {
        let _w = waiting_for(format!("{db} booted from {} to answer (dbimage test, at most {timeout_secs} s)", image.display()));
        run(c)
    };
    assert!(out.status.success(), "{db} image did not answer within {timeout_secs} s");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains(&format!("{db} answered")), "{stdout}");
    eprintln!("--- {db} answered; dbimage test took {} s in all", started.elapsed().as_secs());
    scratch.assert_clean();
    stdout
}
