//! One module per subcommand: orchestration and output.

pub mod cleanup;
pub mod datastores;
pub mod flavor;
pub mod import;
pub mod inspect;
pub mod jobs;
pub mod make;
pub mod playbook;
pub mod prune;
pub mod publish;
pub mod queue;
pub mod test;
pub mod upload;
pub mod worker;

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use crate::elements::{self, Library};
use crate::image::patch;
use crate::settings::Settings;

/// Exit code: the request was wrong (bad flag, unknown database, no match).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: interrupted by Ctrl-C or SIGTERM (after cleaning up).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Parts of a configuration key that mark its value as a credential.
const SECRET_KEY_PARTS: [&str; 6] = ["url", "password", "secret", "pass", "token", "connection"];

/// The Trove guest agent configuration for an image: `controller`'s text
/// (the file fetched from the Trove controller) verbatim when given, else
/// the settings' `guest_agent:` values rendered with the
/// `trove-guest-agent` element's template, else `None` (no values). Either
/// way, values of keys that look like credentials are registered for
/// redaction before anything can print them.
pub fn guest_agent_conf(settings: &Settings, controller: Option<&str>) -> anyhow::Result<Option<String>> {
    let is_secret = is_secret_key;
    if let Some(text) = controller {
        for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
            if is_secret(key) {
                hide(value.trim());
            }
        }
        return Ok(Some(text.to_string()));
    }
    if settings.guest_agent.is_empty() {
        return Ok(None);
    }
    for (key, value) in &settings.guest_agent {
        if is_secret(key) {
            hide(value);
        }
    }
    let library = Library::discover(&elements::search_path(&settings.data_dir.join("elements")))?;
    let element = library.get(crate::build::guest_agent::ELEMENT).ok_or_else(|| {
        UsageError("element trove-guest-agent not found; it holds the guest agent template".into())
    })?;
    let template = element.path.join("templates/trove-guestagent.conf.j2");
    Ok(Some(patch::render_guest_agent(&template, &settings.guest_agent)?))
}

/// Whether a configuration key names a credential: it contains one of
/// [`SECRET_KEY_PARTS`], or is a key (`key`, `ssl_key`, `api-key`).
fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_lowercase();
    SECRET_KEY_PARTS.iter().any(|p| key.contains(p)) || key == "key" || key.ends_with("_key") || key.ends_with("-key")
}

/// Registers a credential value for redaction, and the password of a URL
/// (`rabbit://user:PASSWORD@host`) on its own, which an error may quote.
fn hide(value: &str) {
    crate::run::add_secret(value);
    if let Some((_, rest)) = value.split_once("://")
        && let Some((cred, _)) = rest.rsplit_once('@')
        && let Some((_, pw)) = cred.split_once(':')
    {
        crate::run::add_secret(pw);
    }
}

/// The file name of `path` without its extension (`a/pg-15.qcow2` → `pg-15`).
pub fn file_stem(path: &Path) -> anyhow::Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .ok_or_else(|| UsageError(format!("{}: cannot derive a name from this file name", path.display())).into())
}

/// Whether `a` and `b` are the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// An error that is the user's to fix, as opposed to a failure while working.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The error and its causes on one line, each cause once: many errors
/// already quote their source, which `{:#}` would repeat.
fn one_line(err: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

/// Prints an error (one line first, details after) and maps it to an exit code.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    let Err(err) = result else { return ExitCode::SUCCESS };
    let msg = crate::run::redact(&one_line(&err));
    eprintln!("error: {msg}");
    if err.downcast_ref::<make::NotPublished>().is_some() {
        ExitCode::from(make::EXIT_NOT_PUBLISHED)
    } else if crate::run::cancelled() || err.downcast_ref::<crate::run::Interrupted>().is_some() {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if err.downcast_ref::<UsageError>().is_some()
        || err.downcast_ref::<crate::catalog::CatalogError>().is_some()
        || err.downcast_ref::<crate::host_tools::MissingTools>().is_some()
        || err.downcast_ref::<crate::elements::ElementError>().is_some()
        || matches!(err.downcast_ref::<crate::remote::playbook::PlaybookError>(), Some(crate::remote::playbook::PlaybookError::Invalid { .. }))
        || matches!(err.downcast_ref::<crate::cloud::CloudError>(), Some(crate::cloud::CloudError::Config(_)))
        || err.downcast_ref::<crate::queue::QueueError>().is_some_and(|e| e.is_usage())
        || matches!(
            err.downcast_ref::<crate::settings::SettingsError>(),
            Some(crate::settings::SettingsError::GuestAgentInstall { .. })
        )
        // A bad image (not an image, truncated, no Linux root) is the user's to fix.
        || err.downcast_ref::<crate::image::ImageError>().is_some_and(|e| e.is_bad_input())
        || err.downcast_ref::<crate::image::patch::PatchError>().is_some_and(|e| e.is_bad_input())
        || err.downcast_ref::<crate::disk::chroot::ChrootError>().is_some_and(|e| e.is_bad_input())
        || err
            .downcast_ref::<crate::catalog::flavors::FlavorError>()
            .is_some_and(|e| e.is_usage())
    {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_keys_are_recognised() {
        for key in ["transport_url", "admin_password", "ssl_key", "api-key", "Key", "auth_token", "connection"] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["region", "debug", "keyring", "datastore_manager", "key_type_name"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn causes_are_shown_once() {
        let io = std::io::Error::other("Invalid argument");
        let quoted = anyhow::Error::new(crate::disk::mount::MountError { what: "x".into(), target: "/t".into(), source: io });
        assert_eq!(one_line(&quoted), "cannot mount x on /t: Invalid argument");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&plain), "outer: inner");
    }

    #[test]
    fn url_passwords_are_hidden_on_their_own() {
        hide("rabbit://trove:S3cretPw-x@10.0.0.1:5672/");
        let shown = crate::run::redact("auth failed for S3cretPw-x at 10.0.0.1");
        assert_eq!(shown, "auth failed for *** at 10.0.0.1");
    }

    #[test]
    fn guest_agent_conf_from_the_controller_or_the_settings() {
        let base = Settings::load().unwrap();
        let without = Settings { guest_agent: Default::default(), ..base.clone() };
        assert_eq!(guest_agent_conf(&without, None).unwrap(), None);
        let with = Settings {
            guest_agent: [("transport_url".to_string(), "rabbit://trove:settings-pw-1@192.0.2.1/".to_string())].into(),
            ..base
        };
        let rendered = guest_agent_conf(&with, None).unwrap().unwrap();
        assert!(rendered.contains("\ntransport_url = rabbit://trove:settings-pw-1@192.0.2.1/\n"), "{rendered}");
        assert!(crate::run::redact(&rendered).contains("\ntransport_url = ***\n"));
        // The controller's file wins, byte for byte, and its credentials
        // are redacted from then on.
        let controller = "[DEFAULT]\ntransport_url = rabbit://trove:controller-pw-2@10.0.0.1:5672/\ndebug = True";
        assert_eq!(guest_agent_conf(&with, Some(controller)).unwrap().as_deref(), Some(controller));
        assert_eq!(crate::run::redact(controller), "[DEFAULT]\ntransport_url = ***\ndebug = True");
    }
}
