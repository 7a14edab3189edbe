//! `dbimage make`: plan, build, report.

use std::time::Duration;

use indicatif::HumanBytes;

use crate::build::pipeline;
use crate::build::plan::Plan;
use crate::cli::MakeArgs;
use crate::commands::{UsageError, guest_agent_conf, publish};
use crate::host_tools::{self, Group};
use crate::remote::build::{BuildVm, Request};
use crate::remote::controller;
use crate::settings::Settings;

/// Exit code: the image was built but publishing it failed.
pub const EXIT_NOT_PUBLISHED: u8 = 3;

/// The image was built and kept; publishing it failed.
#[derive(Debug, thiserror::Error)]
#[error("the image was built ({image}) but not published: {error:#}; fix that and run `dbimage publish {image}`")]
pub struct NotPublished {
    /// The image file, kept.
    pub image: String,
    /// Why publishing failed.
    pub error: anyhow::Error,
}

/// Runs `dbimage make`.
pub fn run(mut args: MakeArgs) -> anyhow::Result<()> {
    // First, before any thread: mounts die with this process.
    crate::disk::namespace::enter_private()?;
    let settings = Settings::load()?;
    // A dry run stays offline.
    if !args.dry_run {
        args.key = publish::prepare_cloud(args.key.as_deref(), &args.publish.cloud, !args.image_only)?;
    }
    // Everything remote is read before building: a wrong host fails in seconds.
    let given_conf = args.guest_agent_config.as_deref().map(read_guest_agent_config).transpose()?;
    let controller = match (&given_conf, args.dry_run) {
        (None, false) => controller::fetch(&settings)?,
        _ => None,
    };
    let vm = match &args.dibvm {
        Some(host) if !args.dry_run => {
            host_tools::require(&[Group::Remote], &[])?;
            Some(BuildVm::connect(host, &settings)?)
        }
        _ => None,
    };
    if let Some(vm) = &vm
        && args.arch.is_none()
    {
        args.arch = Some(vm.arch.ok_or_else(|| {
            UsageError("cannot tell the build VM's architecture from uname -m; pass -a amd64 or -a ppc64le".into())
        })?);
    }
    let (mut plan, elements) = Plan::new(&args, &settings)?;
    if let Some(key) = controller.as_ref().and_then(|c| c.public_key.as_deref()) {
        plan.add_ssh_key(key);
    }
    if plan.guest_agent.is_some() {
        let from_cloud = given_conf.or_else(|| controller.map(|c| c.guest_agent_conf));
        plan.guest_agent_conf = guest_agent_conf(&settings, from_cloud.as_deref())?;
        if plan.publish {
            publish::check_credentials_visibility(plan.guest_agent_conf.is_some(), &args.publish)?;
        }
        if plan.guest_agent_conf.is_none() {
            tracing::warn!(
                "the image gets the Trove guest agent but no configuration (no controller, no guest_agent values \
                 in the settings); Trove must inject /etc/trove/conf.d/trove-guestagent.conf at boot"
            );
        }
    }
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    host_tools::require(&plan.host_tools(vm.is_some()), &[])?;
    if let Some(terms) = plan.datastore.repo.as_ref().and_then(|r| r.terms.as_deref()) {
        tracing::warn!(
            "{} {} edition: {terms} By building this image you confirm that you have read and comply with these terms.",
            plan.datastore.db,
            plan.datastore.source
        );
    }
    tracing::info!(
        "building {} ({} {} from {}, Debian {} {})",
        plan.name,
        plan.datastore.db,
        plan.datastore.version,
        plan.datastore.source,
        plan.datastore.release,
        plan.request.arch
    );
    let image = match vm {
        Some(vm) => {
            let req = Request { plan: &plan, keys: plan.ssh_key.as_deref() };
            let image = vm.build(&args, &settings, &req)?;
            let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
            println!("{} ({})", image.display(), HumanBytes(size));
            println!("{}", crate::build::manifest::path_beside(&image).display());
            image
        }
        None => {
            let outcome = pipeline::build(&plan, &elements)?;
            eprintln!("{}", timing_table(&outcome.timings));
            println!("{} ({})", outcome.image.display(), HumanBytes(outcome.size));
            println!("{}", outcome.manifest.display());
            outcome.image
        }
    };
    if plan.publish {
        publish::after_make(&settings, &image, &args.publish)
            .map_err(|error| NotPublished { image: image.display().to_string(), error })?;
    }
    Ok(())
}

/// Reads `--guest-agent-config`; its text holds credentials and is never shown.
fn read_guest_agent_config(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!("--guest-agent-config {}: {e}; give the guest agent's configuration file", path.display()))
    })?;
    if text.trim().is_empty() {
        return Err(UsageError(format!("--guest-agent-config {} is empty", path.display())).into());
    }
    Ok(text)
}

/// The per-step timing table printed at the end of a build.
pub fn timing_table(timings: &[(String, Duration)]) -> String {
    let width = timings.iter().map(|(n, _)| n.len()).max().unwrap_or(4).max(5);
    let mut out = format!("{:<width$}  {:>8}\n", "phase", "seconds");
    for (name, d) in timings {
        out.push_str(&format!("{name:<width$}  {:>8.1}\n", d.as_secs_f64()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = timing_table(&[
            ("base tree".into(), Duration::from_millis(1500)),
            ("  install.d".into(), Duration::from_secs(62)),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].ends_with("     1.5"), "{t}");
        assert!(lines[2].starts_with("  install.d") && lines[2].ends_with("    62.0"), "{t}");
    }
}
