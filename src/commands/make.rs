//! `dbimage make`: plan, build, report.

use std::time::Duration;

use indicatif::HumanBytes;

use crate::build::pipeline;
use crate::build::plan::Plan;
use crate::cli::MakeArgs;
use crate::commands::{guest_agent_conf, publish};
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
    let settings = Settings::load()?;
    // A dry run stays offline.
    if !args.dry_run {
        args.key = publish::prepare_cloud(args.key.as_deref(), &args.publish.cloud, !args.image_only)?;
    }
    let (mut plan, elements) = Plan::new(&args, &settings)?;
    if plan.guest_agent.is_some() {
        plan.guest_agent_conf = guest_agent_conf(&settings, None)?;
        if plan.guest_agent_conf.is_none() {
            tracing::warn!(
                "the image gets the Trove guest agent but no configuration (no guest_agent values in the \
                 settings); Trove must inject /etc/trove/conf.d/trove-guestagent.conf at boot"
            );
        }
    }
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
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
    let outcome = pipeline::build(&plan, &elements)?;
    eprintln!("{}", timing_table(&outcome.timings));
    println!("{} ({})", outcome.image.display(), HumanBytes(outcome.size));
    println!("{}", outcome.manifest.display());
    if plan.publish {
        publish::after_make(&settings, &outcome.image, &args.publish)
            .map_err(|error| NotPublished { image: outcome.image.display().to_string(), error })?;
    }
    Ok(())
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
