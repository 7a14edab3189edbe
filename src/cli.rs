//! Command-line definitions (clap). Parsing only: no behaviour lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::arch::Arch;

/// Build bootable database guest images for OpenStack Trove.
#[derive(Debug, Parser)]
#[command(name = "dbimage", version, about, propagate_version = true)]
pub struct Cli {
    /// Write every command and its output to this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Show every command and its output on the terminal.
    #[arg(long, global = true)]
    pub verbose: bool,
    /// Show only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a database image (and publish it unless -I).
    Make(MakeArgs),
    /// Boot an image under QEMU and wait until its database answers.
    Test(TestArgs),
    /// List the supported databases, versions and sources.
    Datastores(DatastoresArgs),
    /// Undo mounts and loop devices left by a build that was killed.
    Cleanup,
    /// Show what an image holds (OS, database, kernel, SSH keys); needs no root.
    Inspect(InspectArgs),
    /// Show, change and upload a database's flavors (vCPUs, memory, disks).
    Flavor(FlavorArgs),
    /// Upload an existing image to Glance and register its Trove datastore version.
    Publish(PublishArgs),
    /// Re-open an existing image, patch it for another cloud, and publish it.
    Upload(UploadArgs),
    /// Bring a foreign disk image (raw, qcow2, vmdk, vhd, vdi) in: check, convert, publish.
    Import(ImportArgs),
    /// Run a playbook against a host over SSH, or trust a host's SSH key.
    Playbook(PlaybookArgs),
    /// Delete all but the newest N images of a base, in Glance and in images/.
    Prune(PruneArgs),
    /// Put make/upload/import jobs on the build farm's Redis queue, or retry a dead one.
    Queue(QueueArgs),
    /// Run jobs from the build farm's queue, up to N at once.
    Worker(WorkerArgs),
    /// List the build farm's jobs, or show one (history, host, timings, log tail).
    Jobs(JobsArgs),
}

/// `dbimage queue`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// The `queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Submit a job: the command and its arguments as for `dbimage make|upload|import`.
    ///
    /// The arguments are checked here and run on a worker: paths are the
    /// worker's (use absolute paths on storage the workers share).
    Submit(SubmitArgs),
    /// Put a job from the dead-letter list back on the queue, its attempts reset.
    Retry {
        /// The job's number.
        id: u64,
    },
}

/// `dbimage queue submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Attempts before the job goes to the dead-letter list (default: the queue's max_attempts).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// The command.
    #[arg(value_enum)]
    pub kind: crate::queue::Kind,
    /// Its arguments, exactly as for the command itself.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// `dbimage worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Jobs run at once.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Where each attempt's log goes (job-<id>-<attempt>.log).
    #[arg(long, value_name = "DIR", default_value = "/var/log/dbimage/jobs")]
    pub log_dir: PathBuf,
    /// Exit when the queue has nothing to hand out and no job is running.
    #[arg(long)]
    pub drain: bool,
}

/// `dbimage jobs`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct JobsArgs {
    /// Show one job.
    #[command(subcommand)]
    pub command: Option<JobsCommand>,
    /// Only jobs in these states (repeat or comma-separate).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub state: Vec<crate::queue::State>,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

/// The `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// One job: its command, state history, host, timings and log tail.
    Show {
        /// The job's number.
        id: u64,
    },
}

/// `dbimage prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// How many images of the base to keep (at least 1; a -latest image counts).
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// Database: the base is <db>-<version><source> (needs -v).
    #[arg(short = 'd', long = "database", value_name = "DB", requires = "db_version")]
    pub db: Option<String>,
    /// Database version (first two components count; needs -d).
    #[arg(short = 'v', long = "db-version", value_name = "VER", requires = "db")]
    pub db_version: Option<String>,
    /// The base name instead of -d/-v (image names without their date).
    #[arg(long, value_name = "BASE", conflicts_with_all = ["db", "db_version"])]
    pub name: Option<String>,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune Glance only.
    #[arg(long, conflicts_with = "local_only")]
    pub cloud_only: bool,
    /// Prune the local images directory only (no cloud needed).
    #[arg(long)]
    pub local_only: bool,
    /// Which cloud.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

/// `dbimage import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The disk image, in any format qemu-img reads (raw, qcow2, vmdk, vpc/vhd, vdi).
    pub file: PathBuf,
    /// Register it as this database's datastore version (needs -v); without -d/-v, Glance only.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    pub db: Option<String>,
    /// The datastore version (first two components count; needs -d).
    #[arg(short = 'v', long = "db-version", value_name = "VER")]
    pub db_version: Option<String>,
    /// Image name, for the file and Glance (default: the input's file name without its extension).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Output directory (default: images/).
    #[arg(short = 'o', long = "outdir", value_name = "DIR")]
    pub outdir: Option<PathBuf>,
    /// Replace an existing image of the same name.
    #[arg(long)]
    pub force: bool,
    /// Write the QCOW2 to the output directory and stop there.
    #[arg(long)]
    pub no_publish: bool,
    /// QCOW2 compression.
    #[arg(long, value_enum, default_value_t = Compression::Zlib)]
    pub compression: Compression,
    /// How to publish.
    #[command(flatten)]
    pub publish: PublishOptions,
}

/// `dbimage playbook`.
#[derive(Debug, Args)]
pub struct PlaybookArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PlaybookCommand,
}

/// The `playbook` subcommands.
#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// Run the tasks of a playbook file against one host.
    Run(PlaybookRunArgs),
    /// Show a host's SSH host key fingerprints; with --yes, trust them (dbimage's known_hosts).
    Trust(PlaybookTrustArgs),
}

/// `dbimage playbook run`.
#[derive(Debug, Args)]
pub struct PlaybookRunArgs {
    /// The playbook: a path, or a name under playbooks/ (with or without .yaml).
    pub file: PathBuf,
    /// The host: `dibvm`, `controller` (from the settings), or `[USER@]ADDRESS`.
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// SSH port (default: the settings', else 22).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Private key file (default: the settings', else ssh's own).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A variable for the playbook (repeatable).
    #[arg(short = 'e', long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// A variable whose value is redacted from every log line (repeatable).
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    pub secrets: Vec<String>,
}

/// `dbimage playbook trust`.
#[derive(Debug, Args)]
pub struct PlaybookTrustArgs {
    /// The host: `dibvm`, `controller` (from the settings), or an address.
    pub host: String,
    /// SSH port (default: the settings', else 22).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Write the keys into known_hosts, replacing the host's old ones (check
    /// the fingerprints first).
    #[arg(long)]
    pub yes: bool,
}

/// `dbimage upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Database the image holds.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    pub db: String,
    /// Its version (first two components count).
    #[arg(short = 'v', long = "db-version", value_name = "VER")]
    pub db_version: String,
    /// The image is the vendor's community edition.
    #[arg(short = 'c', long, conflicts_with = "enterprise")]
    pub community: bool,
    /// The image is the vendor's enterprise edition.
    #[arg(short = 'e', long)]
    pub enterprise: bool,
    /// The image: a path, or a file name under images/.
    #[arg(short = 'f', long = "file", value_name = "IMAGE")]
    pub file: PathBuf,
    /// Public SSH key for the user: a .pub file, the key, or a Nova keypair name.
    #[arg(short = 'k', long = "key", value_name = "KEYPAIR")]
    pub key: Option<String>,
    /// A command run in a chroot of the image (proc, sys, dev mounted).
    #[arg(short = 's', long = "script", value_name = "CMD")]
    pub script: Option<String>,
    /// The user that gets the key (default: the image's cloud user).
    #[arg(short = 'b', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Output directory for the patched image (default: images/).
    #[arg(short = 'o', long = "outdir", value_name = "DIR")]
    pub outdir: Option<PathBuf>,
    /// Replace an existing patched image of the same name.
    #[arg(long)]
    pub force: bool,
    /// Write the patched image to the output directory and stop there.
    #[arg(long)]
    pub no_publish: bool,
    /// How to publish.
    #[command(flatten)]
    pub publish: PublishOptions,
}

/// Which cloud to use (see clouds.yaml / OS_* in the README).
#[derive(Debug, Clone, Default, Args)]
pub struct CloudArgs {
    /// The clouds.yaml entry to use (default: $OS_CLOUD, else the OS_* variables).
    #[arg(long, value_name = "NAME")]
    pub os_cloud: Option<String>,
    /// Region whose endpoints to use (overrides the cloud's region_name).
    #[arg(long, value_name = "REGION")]
    pub os_region_name: Option<String>,
}

/// Glance visibility of a published image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Visibility {
    /// Only the owning project (Trove's service project, usually).
    Private,
    /// Projects it is shared with.
    Shared,
    /// Every project, but not listed by default.
    Community,
    /// Every project.
    Public,
}

/// How an image is published (shared by `make` and `publish`).
#[derive(Debug, Clone, Args)]
pub struct PublishOptions {
    /// Glance visibility of the image.
    #[arg(long, value_enum, default_value_t = Visibility::Private)]
    pub visibility: Visibility,
    /// Keep the uploaded image when Trove refuses the datastore version.
    #[arg(long)]
    pub keep_image: bool,
    /// Publish as <base>-latest and rename the former -latest image after its
    /// creation date (default: the settings' `rotate`).
    #[arg(long)]
    pub rotate: bool,
    /// Publish with visibility public or community although the image carries
    /// the guest agent's configuration (message-bus credentials every
    /// project could then read).
    #[arg(long)]
    pub force_public_credentials: bool,
    /// Which cloud.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

/// `dbimage publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The QCOW2 image (its manifest beside it supplies -d and -v when omitted).
    pub image: PathBuf,
    /// Database (default: from the manifest).
    #[arg(short = 'd', long = "database", value_name = "DB")]
    pub db: Option<String>,
    /// Datastore version name (default: from the manifest).
    #[arg(short = 'v', long = "db-version", value_name = "VER")]
    pub db_version: Option<String>,
    /// Glance image name (default: the file name without .qcow2).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// How to publish.
    #[command(flatten)]
    pub publish: PublishOptions,
}

/// Where the database comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    /// Readable by every QEMU; slower.
    Zlib,
    /// Several times faster; needs QEMU 5.1 or newer to read.
    Zstd,
}

/// `dbimage make`.
#[derive(Debug, Args)]
pub struct MakeArgs {
    /// Database: mariadb, mongodb, mysql, postgresql or redis.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    pub db: String,
    /// Database version; only the first two components are used (1.2.7 → 1.2).
    #[arg(short = 'v', long = "db-version", value_name = "VER")]
    pub db_version: Option<String>,
    /// The vendor's community edition.
    #[arg(short = 'c', long, conflicts_with = "enterprise")]
    pub community: bool,
    /// The vendor's enterprise edition.
    #[arg(short = 'e', long)]
    pub enterprise: bool,
    /// Public SSH key for the database user: a file or the key itself.
    #[arg(short = 'k', long = "key", value_name = "KEYPAIR")]
    pub key: Option<String>,
    /// Build on this remote build VM over SSH.
    #[arg(short = 'i', long = "dibvm", value_name = "HOST")]
    pub dibvm: Option<String>,
    /// Install this package (.deb or tarball with setup.sh) instead of the catalog's.
    #[arg(short = 'p', long = "package", value_name = "PKG", requires = "db_version")]
    pub package: Option<PathBuf>,
    /// Build the QCOW2 image only; contact no cloud.
    #[arg(short = 'I', long = "image-only")]
    pub image_only: bool,
    /// Target architecture (default: the host's).
    #[arg(short = 'a', long = "arch", value_name = "ARCH")]
    pub arch: Option<Arch>,
    /// Debian release (default: the newest one that has the version).
    #[arg(short = 'r', long = "release", value_name = "RELEASE")]
    pub release: Option<String>,
    /// The database user that gets sudo and the SSH key (default: debian).
    #[arg(short = 'b', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Output directory (default: images/).
    #[arg(short = 'o', long = "outdir", value_name = "DIR")]
    pub outdir: Option<PathBuf>,
    /// Extra elements to include (repeatable), found in elements/ or ELEMENTS_PATH.
    #[arg(short = 'x', long = "element", value_name = "NAME")]
    pub elements: Vec<String>,
    /// Install the Trove guest agent also with -I (it is in by default when publishing).
    #[arg(long, conflicts_with = "no_guest_agent")]
    pub guest_agent: bool,
    /// Leave the Trove guest agent out, also when publishing.
    #[arg(long)]
    pub no_guest_agent: bool,
    /// QCOW2 compression.
    #[arg(long, value_enum, default_value_t = Compression::Zlib)]
    pub compression: Compression,
    /// Disk size in MiB (default: the tree's size plus headroom).
    #[arg(long, value_name = "MIB")]
    pub size: Option<u64>,
    /// Replace an existing image of the same name.
    #[arg(long)]
    pub force: bool,
    /// Print the resolved plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Write this file as the Trove guest agent's configuration (instead of
    /// the controller's or the settings' values).
    #[arg(long, value_name = "FILE")]
    pub guest_agent_config: Option<PathBuf>,
    /// How to publish (without -I).
    #[command(flatten)]
    pub publish: PublishOptions,
}

/// `dbimage test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The QCOW2 image (its manifest beside it names the database).
    pub image: PathBuf,
    /// Give up after this many seconds [default: 600 for amd64, 1800 for
    /// ppc64le, whose POWER machine QEMU emulates about three times slower].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Guest memory in MiB [default: 1024 for amd64, 2048 for ppc64le].
    #[arg(long, value_parser = clap::value_parser!(u32).range(256..))]
    pub memory: Option<u32>,
}

/// Output formats for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// `dbimage datastores`.
#[derive(Debug, Args)]
pub struct DatastoresArgs {
    /// Only this database.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    pub db: Option<String>,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `dbimage inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image: QCOW2, raw, or any other format qemu-img reads.
    pub image: PathBuf,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `dbimage flavor`.
#[derive(Debug, Args)]
pub struct FlavorArgs {
    /// What to do with the flavors.
    #[command(subcommand)]
    pub command: FlavorCommand,
}

/// The `flavor` subcommands (the original's `dbflavor-show/change/upload.sh`).
#[derive(Debug, Subcommand)]
pub enum FlavorCommand {
    /// Show the flavors: current values, customized ones marked with *.
    Show(FlavorShowArgs),
    /// Change attributes of one flavor; -1 restores an attribute's default.
    Change(FlavorChangeArgs),
    /// Create the flavors in Nova.
    Upload(FlavorUploadArgs),
}

/// Output formats of `flavor show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlavorFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for programs, current and predefined values.
    Json,
    /// YAML for programs, current and predefined values.
    Yaml,
}

/// `dbimage flavor show`.
#[derive(Debug, Args)]
pub struct FlavorShowArgs {
    /// Database: mariadb, mongodb, mysql, postgresql or redis.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    pub db: String,
    /// Show the predefined values instead of the current ones.
    #[arg(short = 'p', long)]
    pub predefined: bool,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = FlavorFormat::Table)]
    pub format: FlavorFormat,
}

/// `dbimage flavor change`: each value may be -1, which restores the
/// predefined one (hence `i64` and negative numbers allowed).
#[derive(Debug, Args)]
pub struct FlavorChangeArgs {
    /// Database: mariadb, mongodb, mysql, postgresql or redis.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    pub db: String,
    /// The flavor to change (tiny, small, medium, large, xlarge).
    #[arg(short = 'f', long = "flavor", value_name = "NAME")]
    pub flavor: String,
    /// Virtual CPUs (1 to 256).
    #[arg(short = 'c', long, value_name = "VCPUS", allow_negative_numbers = true)]
    pub vcpus: Option<i64>,
    /// Memory in GB (1 to 1024).
    #[arg(short = 'm', long, value_name = "GB", allow_negative_numbers = true)]
    pub memory: Option<i64>,
    /// Root disk in MB (1024 to 2097152; rounded up to whole GB).
    #[arg(short = 'r', long, value_name = "MB", allow_negative_numbers = true)]
    pub root: Option<i64>,
    /// Database disk in MB (0 to 16777216).
    #[arg(short = 's', long = "db-disk", value_name = "MB", allow_negative_numbers = true)]
    pub db_disk: Option<i64>,
    /// Backup storage in MB (0 to 16777216).
    #[arg(short = 'b', long, value_name = "MB", allow_negative_numbers = true)]
    pub backup: Option<i64>,
}

/// `dbimage flavor upload`.
#[derive(Debug, Args)]
pub struct FlavorUploadArgs {
    /// Database: mariadb, mongodb, mysql, postgresql or redis.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    pub db: String,
    /// Print the flavors Nova would get and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Which cloud.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn original_flags_parse() {
        let cli = Cli::try_parse_from([
            "dbimage", "make", "-d", "postgresql", "-v", "15.4", "-c", "-k", "key", "-I", "-a",
            "ppc64le", "-r", "trixie", "-b", "dba", "-o", "/tmp/x",
        ])
        .unwrap();
        let Command::Make(m) = cli.command else { panic!("make") };
        assert_eq!(m.db_version.as_deref(), Some("15.4"));
        assert!(m.community && m.image_only);
        assert_eq!(m.arch, Some(Arch::Ppc64le));
        assert!(Cli::try_parse_from(["dbimage", "make", "-d", "x", "-c", "-e"]).is_err());
        assert!(Cli::try_parse_from(["dbimage", "make", "-d", "x", "-p", "f.deb"]).is_err(), "-p needs -v");
    }

    #[test]
    fn flavor_flags_parse() {
        let cli = Cli::try_parse_from([
            "dbimage", "flavor", "change", "-d", "mysql", "-f", "small", "-c", "-1", "-m", "8",
        ])
        .unwrap();
        let Command::Flavor(FlavorArgs { command: FlavorCommand::Change(c) }) = cli.command else {
            panic!("flavor change")
        };
        assert_eq!((c.flavor.as_str(), c.vcpus, c.memory, c.root), ("small", Some(-1), Some(8), None));
        let cli = Cli::try_parse_from(["dbimage", "flavor", "show", "-d", "redis", "-p", "-f", "yaml"])
            .unwrap();
        let Command::Flavor(FlavorArgs { command: FlavorCommand::Show(s) }) = cli.command else {
            panic!("flavor show")
        };
        assert!(s.predefined && s.format == FlavorFormat::Yaml);
    }
}
