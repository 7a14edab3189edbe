//! Remote hosts: SSH sessions ([`ssh`]), playbooks run over them
//! ([`playbook`]), the remote build on a build VM ([`build`]) and the
//! metadata read from the Trove controller ([`controller`]).

pub mod build;
pub mod controller;
pub mod playbook;
pub mod ssh;

use crate::settings::{RemoteHost, Settings};

/// Errors talking to a remote host.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The connection could not be set up (key, host key, address), or a
    /// local file for it is missing.
    #[error("{0}")]
    Setup(String),
    /// The connection dropped while a command ran.
    #[error("lost the connection to {host}{}", tail_text(tail))]
    Lost {
        /// The host.
        host: String,
        /// The last output lines seen before the drop.
        tail: Vec<String>,
    },
    /// A remote command exited non-zero.
    #[error("exit code {rc} on {host}{}", tail_text(tail))]
    Failed {
        /// The host.
        host: String,
        /// Its exit code.
        rc: i32,
        /// Its last output lines, redacted.
        tail: Vec<String>,
    },
    /// Ctrl-C or SIGTERM arrived; the remote command was stopped.
    #[error("interrupted by signal; the remote command was stopped")]
    Interrupted,
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output:\n    {}", tail.join("\n    "))
    }
}

/// The host a `--host` or `-i` value names: `dibvm` and `controller` are the
/// hosts of the settings file; anything else is an address (optionally
/// `user@address`) reached with the build VM's SSH settings.
pub fn resolve_target(name: &str, settings: &Settings) -> Result<ssh::Target, RemoteError> {
    let (host, ssh) = match (name, &settings.controller, &settings.dibvm.host) {
        ("controller", Some(c), _) => (c.ssh.host.clone().unwrap_or_default(), c.ssh.clone()),
        ("controller", None, _) => {
            return Err(RemoteError::Setup(
                "no controller in the settings; set controller.host (or DBIMAGE_CONTROLLER_IP)".into(),
            ));
        }
        ("dibvm", _, Some(h)) => (h.clone(), settings.dibvm.clone()),
        ("dibvm", _, None) => {
            return Err(RemoteError::Setup("no build VM in the settings; set dibvm.host or give an address".into()));
        }
        _ => (name.to_string(), settings.dibvm.clone()),
    };
    let (user, host) = match host.split_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (ssh.user.clone(), host),
    };
    Ok(ssh::Target { host, ssh: RemoteHost { user, ..ssh }, known_hosts: settings.known_hosts.clone() })
}
