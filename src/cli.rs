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
}

/// `dbimage test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The QCOW2 image (its manifest beside it names the database).
    pub image: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
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
}
