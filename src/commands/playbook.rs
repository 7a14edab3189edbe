//! `dbimage playbook run|trust`: run a playbook by hand, and show and trust
//! a host's SSH host keys (the known_hosts file dbimage checks strictly).

use std::path::PathBuf;

use crate::cli::{PlaybookArgs, PlaybookCommand, PlaybookRunArgs, PlaybookTrustArgs};
use crate::commands::UsageError;
use crate::remote::playbook::{self, Playbook};
use crate::remote::ssh::{self, Connection};
use crate::settings::Settings;

/// Runs `dbimage playbook`.
pub fn run(args: PlaybookArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    match args.command {
        PlaybookCommand::Run(a) => run_playbook(a, &settings),
        PlaybookCommand::Trust(a) => trust(a, &settings),
    }
}

fn run_playbook(args: PlaybookRunArgs, settings: &Settings) -> anyhow::Result<()> {
    let file = find(&args.file, settings)?;
    let book = Playbook::load(&file)?;
    let mut vars = playbook::parse_vars(&args.vars).map_err(|e| UsageError(format!("-e {e}")))?;
    let secrets = playbook::parse_secrets(&args.secrets).map_err(|e| UsageError(format!("--secret {e}")))?;
    vars.extend(secrets);
    let mut target = crate::remote::resolve_target(&args.host, settings)?;
    target.ssh.port = args.port.or(target.ssh.port);
    target.ssh.key = args.key.or(target.ssh.key);
    let mut conn = Connection::open(&target)?;
    let shown = target.to_string();
    book.run(&mut conn, &mut vars, &mut |line| println!("[{shown}] {line}"))?;
    conn.close();
    Ok(())
}

/// A path as given, else a name under the data directory's `playbooks/`.
fn find(file: &std::path::Path, settings: &Settings) -> Result<PathBuf, UsageError> {
    if file.is_file() {
        return Ok(file.to_path_buf());
    }
    let dir = settings.data_dir.join("playbooks");
    for candidate in [dir.join(file), dir.join(file).with_extension("yaml")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(UsageError(format!(
        "playbook {}: no such file, nor in {}; give a path or one of the names there",
        file.display(),
        dir.display()
    )))
}

fn trust(args: PlaybookTrustArgs, settings: &Settings) -> anyhow::Result<()> {
    let target = crate::remote::resolve_target(&args.host, settings)?;
    let port = args.port.or(target.ssh.port);
    let keys = ssh::scan(&target.host, port)?;
    println!("{} offers:", target.host);
    for p in &keys.fingerprints {
        println!("  {p}");
    }
    if !args.yes {
        println!(
            "compare them with the host's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it), \
             then run this again with --yes"
        );
        return Ok(());
    }
    let replaced = ssh::trust(&keys, &settings.known_hosts)?;
    println!(
        "trusted: written to {}{}",
        settings.known_hosts.display(),
        if replaced > 0 { format!(" (replacing {replaced} old key(s))") } else { String::new() }
    );
    Ok(())
}
