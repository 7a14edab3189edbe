//! `dbimage queue submit|retry`: put jobs on the build farm's queue.

use clap::Parser;

use crate::cli::{Cli, Command, QueueArgs, QueueCommand, SubmitArgs};
use crate::commands::UsageError;
use crate::queue::{Kind, Queue};
use crate::settings::Settings;

/// Runs `dbimage queue`.
pub fn run(args: QueueArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    match args.command {
        QueueCommand::Submit(sub) => {
            check(&sub)?;
            let args = pin_cloud(sub.args, |k| std::env::var(k).ok().filter(|v| !v.is_empty()));
            let mut queue = Queue::connect(settings.queue.as_ref())?;
            queue.join()?;
            let id = queue.submit(sub.kind, &args, sub.max_attempts)?;
            tracing::info!("job {id} queued: {} {}", sub.kind.as_str(), args.join(" "));
            println!("{id}");
        }
        QueueCommand::Retry { id } => {
            let mut queue = Queue::connect(settings.queue.as_ref())?;
            queue.retry(id)?;
            tracing::info!("job {id} is back on the queue");
        }
    }
    Ok(())
}

/// The submitter's `OS_CLOUD` and `OS_REGION_NAME`, as the command would
/// have used them here, become `--os-cloud`/`--os-region-name` unless the
/// arguments say otherwise: a worker has its own environment. (Clouds
/// given by `OS_AUTH_URL` and friends are not carried: their credentials do
/// not belong in a queue.)
fn pin_cloud(mut args: Vec<String>, env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    for (var, flag) in [("OS_CLOUD", "--os-cloud"), ("OS_REGION_NAME", "--os-region-name")] {
        let given = args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if let (false, Some(value)) = (given, env(var)) {
            args.push(format!("{flag}={value}"));
        }
    }
    args
}

/// Parses the job's arguments as its command would, so a mistake is
/// reported now rather than on a worker, attempt after attempt.
fn check(sub: &SubmitArgs) -> Result<(), UsageError> {
    let argv = ["dbimage", sub.kind.as_str()].into_iter().map(String::from).chain(sub.args.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| {
        if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
            e.exit(); // `queue submit make --help`: the command's help, nothing queued
        }
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        UsageError(format!("job arguments for `{}`: {first}", sub.kind.as_str()))
    })?;
    let same = matches!(
        (sub.kind, &cli.command),
        (Kind::Make, Command::Make(_)) | (Kind::Upload, Command::Upload(_)) | (Kind::Import, Command::Import(_))
    );
    if !same {
        return Err(UsageError(format!("job arguments for `{}` do not parse as that command", sub.kind.as_str())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(argv: &[&str]) -> SubmitArgs {
        let cli = Cli::try_parse_from(["dbimage", "queue", "submit"].iter().chain(argv)).unwrap();
        match cli.command {
            Command::Queue(QueueArgs { command: QueueCommand::Submit(s) }) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn job_arguments_are_checked_as_the_command_would() {
        let ok = submit(&["--max-attempts", "2", "import", "/srv/a.vmdk", "--no-publish", "-o", "/srv/out"]);
        assert_eq!((ok.kind, ok.max_attempts), (Kind::Import, Some(2)));
        assert_eq!(ok.args, ["/srv/a.vmdk", "--no-publish", "-o", "/srv/out"]);
        check(&ok).unwrap();
        let bad = submit(&["import", "/srv/a.vmdk", "--no-such-flag"]);
        let err = check(&bad).unwrap_err().to_string();
        assert!(err.starts_with("job arguments for `import`: unexpected argument '--no-such-flag'"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let arch = submit(&["make", "-d", "redis", "-a", "sparc"]);
        assert!(check(&arch).unwrap_err().to_string().contains("invalid value 'sparc'"));
    }

    #[test]
    fn the_submitters_cloud_goes_with_the_job() {
        let env = |k: &str| match k {
            "OS_CLOUD" => Some("cloud-b".to_string()),
            "OS_REGION_NAME" => Some("RegionTwo".to_string()),
            _ => None,
        };
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pin_cloud(args(&["-d", "redis"]), env),
            ["-d", "redis", "--os-cloud=cloud-b", "--os-region-name=RegionTwo"]
        );
        assert_eq!(
            pin_cloud(args(&["--os-cloud", "prod", "--os-region-name=R1"]), env),
            ["--os-cloud", "prod", "--os-region-name=R1"]
        );
        assert_eq!(pin_cloud(args(&["-d", "redis"]), |_| None), ["-d", "redis"]);
    }
}
