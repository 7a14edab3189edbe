//! Image rotation: the newest image of a base is `<base>-latest`, older
//! ones carry the date (and, when needed, the time) they were created; and
//! pruning, which keeps the newest few of a base in Glance.

use super::glance::{Glance, Image};
use super::trove::Trove;
use super::{CloudError, Session};

/// The base of an image name: the name without a trailing `-YYYY-MM-DD`
/// (`postgresql-15-dib-2026-11-24` → `postgresql-15-dib`); a name without a
/// date is its own base.
pub fn base_name(name: &str) -> &str {
    match name.len().checked_sub(11).and_then(|at| name.get(at..).map(|tail| (at, tail))) {
        Some((at, tail)) if at > 0 && tail.starts_with('-') && is_date(&tail[1..]) => &name[..at],
        _ => name,
    }
}

/// The Glance name of the newest image of `name`'s base: `<base>-latest`.
pub fn latest_name(name: &str) -> String {
    format!("{}-latest", base_name(name))
}

/// The name a former `-latest` image of `base` gets: `<base>-YYYY-MM-DD`
/// from its `created_at` (`2026-11-24T16:20:31Z`), and with `with_time`
/// `<base>-YYYY-MM-DD-HHMMSS`. `None` when `created_at` is not of that form.
pub fn dated_name(base: &str, created_at: &str, with_time: bool) -> Option<String> {
    let date = created_at.get(..10).filter(|d| is_date(d))?;
    if !with_time {
        return Some(format!("{base}-{date}"));
    }
    let time: String = created_at.get(11..19)?.split(':').collect();
    if time.len() != 6 || !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{base}-{date}-{time}"))
}

/// Whether `name` is one of `base`'s rotated Glance names: `<base>-latest`,
/// `<base>-YYYY-MM-DD` or `<base>-YYYY-MM-DD-HHMMSS`.
pub fn is_rotated(base: &str, name: &str) -> bool {
    let Some(rest) = after_base(base, name) else { return false };
    let time = |t: &str| t.len() == 7 && t.starts_with('-') && t.bytes().skip(1).all(|b| b.is_ascii_digit());
    rest == "latest" || (rest.get(..10).is_some_and(is_date) && (rest.len() == 10 || rest.get(10..).is_some_and(time)))
}

/// Whether a local image's file stem is `<base>-YYYY-MM-DD…`.
pub fn is_dated_file(base: &str, stem: &str) -> bool {
    after_base(base, stem).and_then(|rest| rest.get(..10)).is_some_and(is_date)
}

/// What follows `<base>-` in `name`.
fn after_base<'n>(base: &str, name: &'n str) -> Option<&'n str> {
    name.strip_prefix(base)?.strip_prefix('-')
}

/// What pruning a base in Glance did (or, dry, would do).
#[derive(Debug, Default)]
pub struct Pruned {
    /// The newest images, kept (`-latest` first).
    pub kept: Vec<Image>,
    /// Older images kept because a Trove datastore version boots them,
    /// with that version (`postgresql 15`).
    pub in_use: Vec<(Image, String)>,
    /// Older images deleted (or, dry, to be deleted).
    pub deleted: Vec<Image>,
}

/// Keeps the `keep` newest of `base`'s rotated images (`-latest` always
/// among them, then by `created_at`) and deletes the rest, except images a
/// Trove datastore version still boots. With `dry_run` nothing is deleted.
pub fn prune(session: &Session, base: &str, keep: usize, dry_run: bool) -> Result<Pruned, CloudError> {
    let glance = Glance::new(session)?;
    // Trove first: without its versions nothing can be deleted safely.
    let versions = Trove::new(session)?.versions()?;
    let mut images: Vec<Image> =
        glance.list()?.into_iter().filter(|i| i.name.as_deref().is_some_and(|n| is_rotated(base, n))).collect();
    let newest = |i: &Image| {
        let name = i.name.clone().unwrap_or_default();
        (name.ends_with("-latest"), i.created_at.clone().unwrap_or_default(), name)
    };
    images.sort_by_key(|i| std::cmp::Reverse(newest(i)));
    let older = images.split_off(keep.min(images.len()));
    let mut pruned = Pruned { kept: images, ..Pruned::default() };
    for img in older {
        match versions.iter().find(|v| v.image.as_deref() == Some(img.id.as_str())) {
            Some(v) => {
                let version = format!("{} {}", v.datastore_name, v.name);
                pruned.in_use.push((img, version));
            }
            None => {
                if !dry_run {
                    glance.delete(&img.id)?;
                    tracing::info!("deleted Glance image {} ({})", img.name.as_deref().unwrap_or(""), img.id);
                }
                pruned.deleted.push(img);
            }
        }
    }
    Ok(pruned)
}

/// `YYYY-MM-DD` (digits and dashes in those places).
fn is_date(s: &str) -> bool {
    s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_drop_only_a_trailing_date() {
        assert_eq!(base_name("postgresql-15-dib-2026-11-24"), "postgresql-15-dib");
        assert_eq!(base_name("mariadb-10.11-golden"), "mariadb-10.11-golden");
        assert_eq!(base_name("2026-11-24"), "2026-11-24");
        assert_eq!(base_name("x-2026-11-24-extra"), "x-2026-11-24-extra");
        assert_eq!(base_name("x-2026-1-245"), "x-2026-1-245");
        assert_eq!(latest_name("pg-15-dib-2026-11-24"), "pg-15-dib-latest");
        assert_eq!(latest_name("golden"), "golden-latest");
    }

    #[test]
    fn rotated_names_of_a_base() {
        for n in ["pg-latest", "pg-2026-11-24", "pg-2026-11-24-162031"] {
            assert!(is_rotated("pg", n), "{n}");
        }
        for n in ["pg", "pg-golden", "pgx-2026-11-24", "pg-2026-11-24-1620", "pg-2026-11-24-patched", "pg-latest-2"] {
            assert!(!is_rotated("pg", n), "{n}");
        }
        assert!(is_dated_file("pg", "pg-2026-11-24-patched"));
        assert!(!is_dated_file("pg", "pg-latest"));
        assert!(!is_dated_file("pg", "pgx-2026-11-24"));
    }

    #[test]
    fn dated_names_come_from_created_at() {
        assert_eq!(dated_name("pg", "2026-11-24T16:20:31Z", false).as_deref(), Some("pg-2026-11-24"));
        assert_eq!(dated_name("pg", "2026-11-24T16:20:31Z", true).as_deref(), Some("pg-2026-11-24-162031"));
        assert_eq!(dated_name("pg", "yesterday", false), None);
        assert_eq!(dated_name("pg", "2026-11-24", true), None);
    }
}
