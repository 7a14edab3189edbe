//! Names for image rotation: the newest image of a base is `<base>-latest`,
//! older ones carry the date (and, when needed, the time) they were created.

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
    fn dated_names_come_from_created_at() {
        assert_eq!(dated_name("pg", "2026-11-24T16:20:31Z", false).as_deref(), Some("pg-2026-11-24"));
        assert_eq!(dated_name("pg", "2026-11-24T16:20:31Z", true).as_deref(), Some("pg-2026-11-24-162031"));
        assert_eq!(dated_name("pg", "yesterday", false), None);
        assert_eq!(dated_name("pg", "2026-11-24", true), None);
    }
}
