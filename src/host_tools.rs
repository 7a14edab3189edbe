//! The external programs dbimage runs on this host, and which Debian
//! package provides each.
//!
//! The table is `scripts/host-tools`, embedded here: `scripts/setup-host`
//! installs from the same file, so the check and the install cannot drift
//! apart. A command calls [`require`] with the groups its plan needs before
//! it starts work, so a build does not find out after minutes that
//! `qemu-img` is missing.

use std::path::Path;

/// The table, as `scripts/setup-host` reads it.
const TABLE: &str = include_str!("../scripts/host-tools");

/// What a group of programs is needed for (the table's third column on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `make` on this host.
    Build,
    /// A foreign architecture through qemu-user.
    Foreign,
    /// The vendor's repository (`-c`/`-e`).
    Vendor,
    /// A user's `.deb` (`-p`).
    Deb,
    /// Opening an existing image (upload, import, inspect).
    Image,
    /// Checking and uploading an image to Glance.
    Publish,
    /// Booting an image (`dbimage test`).
    Boot,
    /// Booting a ppc64le image.
    BootPpc64le,
    /// Remote hosts over SSH (`-i`, the controller).
    Remote,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Build => "build",
            Group::Foreign => "foreign",
            Group::Vendor => "vendor",
            Group::Deb => "deb",
            Group::Image => "image",
            Group::Publish => "publish",
            Group::Boot => "boot",
            Group::BootPpc64le => "boot-ppc64le",
            Group::Remote => "remote",
        }
    }
}

/// One row of the table: a program and the package that provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// The program's name on PATH.
    pub program: String,
    /// The Debian package that provides it.
    pub package: &'static str,
    groups: &'static str,
}

/// The package of a program the table does not list.
const UNKNOWN: &str = "unknown";

/// Programs this command needs that are not on PATH.
#[derive(Debug, thiserror::Error)]
#[error(
    "this needs {} on this host; install {} (apt-get install, or scripts/setup-host)",
    list(.0, |t| format!("`{}` (package {})", t.program, t.package)),
    list(.0, |t| if t.package == UNKNOWN { format!("what provides `{}`", t.program) } else { t.package.to_string() })
)]
pub struct MissingTools(pub Vec<Tool>);

fn list(tools: &[Tool], f: impl Fn(&Tool) -> String) -> String {
    let mut items: Vec<String> = tools.iter().map(f).collect();
    items.dedup();
    items.join(", ")
}

/// Every program row of the table (packages without a program are left out).
pub fn table() -> impl Iterator<Item = Tool> {
    TABLE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (program, rest) = l.split_once(char::is_whitespace)?;
            let rest = rest.trim_start();
            let (package, groups) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            (program != "-").then(|| Tool { program: program.to_string(), package, groups: groups.trim() })
        })
}

/// The package that provides `program`, when the table knows it.
pub fn package_of(program: &str) -> Option<&'static str> {
    let name = Path::new(program).file_name()?.to_str()?;
    table().find(|t| t.program == name).map(|t| t.package)
}

/// The programs of `groups`, plus `extra` (the table's rows for them, or
/// rows naming no package for programs it does not know).
pub fn needed(groups: &[Group], extra: &[&str]) -> Vec<Tool> {
    let mut tools: Vec<Tool> = table()
        .filter(|t| t.groups.split_whitespace().any(|g| groups.iter().any(|w| w.name() == g)))
        .collect();
    for program in extra {
        if !tools.iter().any(|t| t.program == *program) {
            let tool = table().find(|t| t.program == *program);
            tools.push(tool.unwrap_or(Tool { program: program.to_string(), package: UNKNOWN, groups: "" }));
        }
    }
    tools
}

/// Checks that every program of `groups` (and `extra`) is on PATH.
pub fn require(groups: &[Group], extra: &[&str]) -> Result<(), MissingTools> {
    let missing: Vec<Tool> = needed(groups, extra).into_iter().filter(|t| !on_path(&t.program)).collect();
    if missing.is_empty() { Ok(()) } else { Err(MissingTools(missing)) }
}

/// Whether `program` can be run: a path that exists, or a name on PATH.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return runnable(Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| runnable(&d.join(program))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Group; 9] = [
        Group::Build,
        Group::Foreign,
        Group::Vendor,
        Group::Deb,
        Group::Image,
        Group::Publish,
        Group::Boot,
        Group::BootPpc64le,
        Group::Remote,
    ];

    #[test]
    fn every_group_has_programs_and_every_row_a_package() {
        for g in ALL {
            assert!(!needed(&[g], &[]).is_empty(), "group {} has no program in scripts/host-tools", g.name());
        }
        for t in table() {
            assert!(!t.package.is_empty() && !t.package.contains(' '), "{t:?}");
            assert!(!t.groups.is_empty(), "{} is needed by nothing", t.program);
        }
    }

    #[test]
    fn the_build_needs_qemu_img_from_qemu_utils() {
        let build = needed(&[Group::Build], &[]);
        let img = build.iter().find(|t| t.program == "qemu-img").expect("qemu-img in the build group");
        assert_eq!(img.package, "qemu-utils");
        assert!(build.iter().any(|t| t.program == "debootstrap"));
        // Programs of other groups only are not asked for.
        assert!(!build.iter().any(|t| t.program == "qemu-system-x86_64"));
        assert_eq!(package_of("/usr/bin/psql"), Some("postgresql-client"));
        assert_eq!(package_of("no-such-program"), None);
    }

    #[test]
    fn a_missing_program_is_named_with_its_package() {
        let err = require(&[], &["sh", "dbimage-no-such-tool"]).unwrap_err();
        assert_eq!(err.0.len(), 1);
        let msg = err.to_string();
        assert!(msg.contains("`dbimage-no-such-tool` (package unknown)"), "{msg}");
        let err = MissingTools(needed(&[Group::Boot], &[]).into_iter().filter(|t| t.package == "mtools").collect());
        assert_eq!(
            err.to_string(),
            "this needs `mcopy` (package mtools) on this host; install mtools (apt-get install, or scripts/setup-host)"
        );
        assert!(require(&[], &["sh"]).is_ok());
    }
}
