//! One module per subcommand: orchestration and output.

pub mod cleanup;
pub mod datastores;
pub mod flavor;
pub mod inspect;
pub mod make;
pub mod publish;
pub mod test;
pub mod upload;

use std::process::ExitCode;

/// Exit code: the request was wrong (bad flag, unknown database, no match).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: interrupted by Ctrl-C or SIGTERM (after cleaning up).
pub const EXIT_INTERRUPTED: u8 = 130;

/// An error that is the user's to fix, as opposed to a failure while working.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Prints an error (one line first, details after) and maps it to an exit code.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    let Err(err) = result else { return ExitCode::SUCCESS };
    let msg = crate::run::redact(&format!("{err:#}"));
    eprintln!("error: {msg}");
    if err.downcast_ref::<make::NotPublished>().is_some() {
        ExitCode::from(make::EXIT_NOT_PUBLISHED)
    } else if crate::run::cancelled() || err.downcast_ref::<crate::run::Interrupted>().is_some() {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if err.downcast_ref::<UsageError>().is_some()
        || err.downcast_ref::<crate::catalog::CatalogError>().is_some()
        || err.downcast_ref::<crate::elements::ElementError>().is_some()
        || matches!(err.downcast_ref::<crate::cloud::CloudError>(), Some(crate::cloud::CloudError::Config(_)))
        || matches!(
            err.downcast_ref::<crate::settings::SettingsError>(),
            Some(crate::settings::SettingsError::GuestAgentInstall { .. })
        )
        // A bad image (not an image, truncated, no Linux root) is the user's to fix.
        || err.downcast_ref::<crate::image::ImageError>().is_some_and(|e| e.is_bad_input())
        || err
            .downcast_ref::<crate::catalog::flavors::FlavorError>()
            .is_some_and(|e| e.is_usage())
    {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::FAILURE
    }
}
