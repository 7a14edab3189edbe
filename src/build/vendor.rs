//! Vendor apt repositories for community and enterprise editions.
//!
//! The repository is trusted for itself only: its key goes to
//! `/usr/share/keyrings/` and is named by `signed-by=` in its own sources
//! file, never added to apt's global keyring. A pin makes its packages win
//! over Debian's. Unless the catalog says `keep`, all three files are
//! registered on the teardown stack and removed once the database is in.
//! Of the vendor's key file only the key with the catalog's fingerprint is
//! installed: the file may carry other keys, which must not be trusted.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::catalog::VendorRepo;
use crate::disk::guard::{Teardown, Undo};
use crate::run::{Cmd, Limits};

/// Bounds for gpg reading a key file fetched from the network.
const GPG_LIMITS: Limits =
    Limits { memory: 1 << 30, cpu: std::time::Duration::from_secs(30), wall: std::time::Duration::from_secs(60) };

/// Where the catalog's key files live, relative to the data directory.
pub const KEYS_DIR: &str = "datastores/keys";

/// Reads or fetches the repository's key and checks its fingerprint.
/// Runs before the build touches anything: a bad key stops it early.
pub fn fetch_key(repo: &VendorRepo, data_dir: &Path, scratch: &Path) -> anyhow::Result<Vec<u8>> {
    let key_file = match (&repo.key, &repo.key_url) {
        (Some(name), _) => {
            let path = data_dir.join(KEYS_DIR).join(name);
            if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                bail!("repo key {name:?} must be a file name under {KEYS_DIR}");
            }
            path
        }
        (None, Some(url)) => {
            let path = scratch.join("vendor-key.asc");
            Cmd::new("curl")
                .args(["-fsSL", "--max-time", "60", "-o"])
                .arg(&path)
                .arg(url)
                .run()
                .with_context(|| format!("fetching the vendor's signing key from {url}"))?;
            path
        }
        (None, None) => bail!("the catalog row's repo has no key"),
    };
    let Some(want) = &repo.fingerprint else {
        // A key file of the deployer's own data directory, no fingerprint
        // to pick by: trusted as shipped.
        return fs::read(&key_file)
            .with_context(|| format!("reading the vendor's signing key {}", key_file.display()));
    };
    let got = fingerprints(&key_file)?;
    let want = normalise(want);
    if !got.contains(&want) {
        bail!(
            "the signing key for {} has fingerprint(s) {} but the catalog expects {want}; \
             refusing to trust it",
            repo.url,
            got.join(", ")
        );
    }
    only_key(&key_file, &want)
}

/// The key `fpr` alone out of `key_file`, armored, exported from a
/// temporary keyring.
fn only_key(key_file: &Path, fpr: &str) -> anyhow::Result<Vec<u8>> {
    // gpg 2.2's import asks an agent about secret keys and fails without
    // one; the agent's socket must fit in a short path, so the keyring
    // lives in the system's temporary directory, not the work directory.
    let home = tempfile::Builder::new().prefix("dbimage-gpg-").tempdir()?;
    let gpg = || Cmd::new("gpg").args(["--batch", "--no-tty", "--quiet", "--homedir"]).arg(home.path()).limits(GPG_LIMITS);
    let imported = gpg().arg("--import").arg(key_file).run();
    let exported = imported.and_then(|()| gpg().args(["--armor", "--export", fpr]).output());
    // The agent gpg started for this keyring goes with it.
    let _ = Cmd::new("gpgconf").arg("--homedir").arg(home.path()).args(["--kill", "all"]).limits(GPG_LIMITS).run();
    let key = exported.with_context(|| format!("taking key {fpr} out of {}", key_file.display()))?;
    let check = home.path().join("only.asc");
    fs::write(&check, &key)?;
    let left = fingerprints(&check)?;
    if left != [fpr] {
        bail!("taking key {fpr} out of {} left {left:?}; refusing to trust it", key_file.display());
    }
    Ok(key.into_bytes())
}

fn normalise(fpr: &str) -> String {
    fpr.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_uppercase()
}

/// Primary-key fingerprints in a key file, via `gpg --show-keys`.
fn fingerprints(key_file: &Path) -> anyhow::Result<Vec<String>> {
    let out = Cmd::new("gpg")
        .args(["--batch", "--with-colons", "--show-keys"])
        .arg(key_file)
        .limits(GPG_LIMITS)
        .output()
        .with_context(|| format!("{} is not a readable OpenPGP key", key_file.display()))?;
    // A "fpr" record follows each "pub" record; subkeys' follow "sub".
    let mut after_pub = false;
    let mut found = Vec::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first() {
            Some(&"pub") => after_pub = true,
            Some(&"sub") => after_pub = false,
            Some(&"fpr") if after_pub => {
                if let Some(f) = fields.get(9) {
                    found.push(normalise(f));
                }
                after_pub = false;
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The files a repository puts in the tree, by database name.
struct Files {
    key: PathBuf,
    list: PathBuf,
    pin: PathBuf,
}

fn files(tree: &Path, db: &str) -> Files {
    Files {
        key: tree.join(format!("usr/share/keyrings/dbimage-{db}.asc")),
        list: tree.join(format!("etc/apt/sources.list.d/dbimage-{db}.list")),
        pin: tree.join(format!("etc/apt/preferences.d/dbimage-{db}.pref")),
    }
}

/// Configures the repository in `tree` (apt-get update is the caller's).
pub fn configure(
    td: &mut Teardown,
    tree: &Path,
    db: &str,
    repo: &VendorRepo,
    key: &[u8],
) -> anyhow::Result<()> {
    let f = files(tree, db);
    let in_tree = |p: &Path| format!("/{}", p.strip_prefix(tree).unwrap_or(p).display());
    let list = format!(
        "deb [signed-by={}] {} {} {}\n",
        in_tree(&f.key),
        repo.url,
        repo.suite,
        repo.components.join(" ")
    );
    let pin = format!(
        "Package: *\nPin: {}\nPin-Priority: {}\n",
        match &repo.pin {
            Some(p) => format!("release {p}"),
            None => format!("origin {}", host_of(&repo.url)),
        },
        repo.pin_priority
    );
    for (path, content) in [(&f.key, key), (&f.list, list.as_bytes()), (&f.pin, pin.as_bytes())] {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
        if !repo.keep {
            td.push(Undo::RemoveFile { path: path.clone() });
        }
    }
    Ok(())
}

/// The host part of a repository URL, for an origin pin.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Where each installed package came from, from `apt-cache policy` in the
/// tree: the highest-priority source listing the installed version (when
/// Debian and the vendor carry the same version, the pin decided).
pub fn origins(policy: &str) -> std::collections::BTreeMap<String, String> {
    let mut best: std::collections::BTreeMap<String, (i64, String)> = Default::default();
    let mut package: Option<String> = None;
    let mut in_installed = false;
    for line in policy.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            package = Some(line.trim_end_matches(':').to_string());
            in_installed = false;
            continue;
        }
        let t = line.trim_start();
        if t.starts_with("*** ") {
            in_installed = true;
            continue;
        }
        // Source lines are "PRIORITY URL-or-path …"; anything else is a
        // version line, which ends the installed version's sources.
        let mut words = t.split_whitespace();
        let (prio, url) = (words.next().and_then(|w| w.parse::<i64>().ok()), words.next());
        let (Some(prio), Some(url)) = (prio, url.filter(|u| u.contains("://") || u.starts_with('/'))) else {
            in_installed = false;
            continue;
        };
        let (Some(dist), Some(p)) = (words.next(), &package) else { continue };
        if !in_installed || url.starts_with('/') {
            continue;
        }
        let entry = best.entry(p.clone()).or_insert((i64::MIN, String::new()));
        if prio > entry.0 {
            *entry = (prio, format!("{url} {dist}"));
        }
    }
    best.into_iter().map(|(p, (_, src))| (p, src)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_from_url() {
        assert_eq!(host_of("http://127.0.0.1:8080/repo"), "127.0.0.1");
        assert_eq!(host_of("https://repo.mysql.com/apt/debian"), "repo.mysql.com");
        assert_eq!(host_of("repo.example"), "repo.example");
    }

    #[test]
    fn origins_from_policy() {
        let policy = "\
redis-server:
  Installed: 5:7.0.15-1~deb12u5
  Candidate: 5:7.0.15-1~deb12u5
  Version table:
 *** 5:7.0.15-1~deb12u5 1001
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
       1001 http://127.0.0.1:41234/repo bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
     5:7.0.15-1~deb12u4 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
redis-tools:
  Installed: 5:7.0.15-1~deb12u5
  Version table:
 *** 5:7.0.15-1~deb12u5 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
";
        let o = origins(policy);
        assert_eq!(o["redis-server"], "http://127.0.0.1:41234/repo bookworm/main");
        assert_eq!(o["redis-tools"], "http://deb.debian.org/debian bookworm/main");
    }

    fn repo(key: &str, fingerprint: Option<String>) -> VendorRepo {
        VendorRepo {
            url: "http://127.0.0.1:1/repo".into(),
            suite: "bookworm".into(),
            components: vec!["main".into()],
            key: Some(key.into()),
            key_url: None,
            fingerprint,
            pin: None,
            pin_priority: 1001,
            keep: false,
            terms: None,
        }
    }

    /// Runs gpg on the keyring in `home`, returning its stdout.
    fn gpg(home: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("gpg")
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--homedir"])
            .arg(home)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn only_the_catalogs_key_is_taken_from_a_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("gnupg");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        for who in ["vendor <v@test.invalid>", "intruder <i@test.invalid>"] {
            gpg(&home, &["--quick-gen-key", who, "ed25519", "sign", "never"]);
        }
        let keys_dir = dir.path().join(KEYS_DIR);
        fs::create_dir_all(&keys_dir).unwrap();
        fs::write(keys_dir.join("two.asc"), gpg(&home, &["--armor", "--export"])).unwrap();
        let vendor = gpg(&home, &["--with-colons", "--list-keys", "v@test.invalid"])
            .lines()
            .find_map(|l| l.strip_prefix("fpr:").map(|r| r.trim_matches(':').to_string()))
            .unwrap();
        let _ = std::process::Command::new("gpgconf").arg("--homedir").arg(&home).args(["--kill", "all"]).status();
        assert_eq!(fingerprints(&keys_dir.join("two.asc")).unwrap().len(), 2);

        let repo = repo("two.asc", Some(vendor.clone()));
        // As deep as a build's work directory can be: too deep for gpg-agent's socket.
        let top = tempfile::tempdir().unwrap();
        let scratch = top.path().join("w".repeat(120));
        fs::create_dir(&scratch).unwrap();
        let key = fetch_key(&repo, dir.path(), &scratch).unwrap();
        let installed = dir.path().join("installed.asc");
        fs::write(&installed, &key).unwrap();
        assert_eq!(fingerprints(&installed).unwrap(), [vendor], "exactly the catalog's key");
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0, "the temporary keyring is gone");

        let wrong = VendorRepo { fingerprint: Some("0".repeat(40)), ..repo };
        let err = fetch_key(&wrong, dir.path(), &scratch).unwrap_err().to_string();
        assert!(err.contains("refusing to trust it"), "{err}");
    }

    #[test]
    fn repo_files_are_scoped_and_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = VendorRepo { pin: Some("o=Vendor".into()), ..repo("k.asc", None) };
        let mut td = Teardown::new(None);
        configure(&mut td, dir.path(), "redis", &repo, b"KEY").unwrap();
        let f = files(dir.path(), "redis");
        let list = fs::read_to_string(&f.list).unwrap();
        assert_eq!(
            list,
            "deb [signed-by=/usr/share/keyrings/dbimage-redis.asc] http://127.0.0.1:1/repo bookworm main\n"
        );
        assert!(fs::read_to_string(&f.pin).unwrap().contains("Pin: release o=Vendor\nPin-Priority: 1001"));
        drop(td);
        assert!(!f.key.exists() && !f.list.exists() && !f.pin.exists());

        let mut td = Teardown::new(None);
        configure(&mut td, dir.path(), "redis", &VendorRepo { keep: true, ..repo }, b"KEY").unwrap();
        drop(td);
        assert!(f.list.exists(), "kept when the catalog says so");
    }
}
