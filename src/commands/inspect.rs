//! `dbimage inspect`: prints what an image holds, without root.
//!
//! The work is in [`crate::image::inspect`]; this file maps its errors to
//! exit codes and renders the report as a table or JSON (shape documented
//! there).

use crate::host_tools::{self, Group};
use anyhow::Context as _;
use indicatif::HumanBytes;

use crate::cli::{Format, InspectArgs};
use crate::image::inspect::{self, DatabaseSource, Package, Report};

/// Runs `dbimage inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    host_tools::require(&[Group::Image], &[])?;
    let report = inspect::inspect(&args.image)?;
    let out = match args.format {
        Format::Table => table(&report),
        Format::Json => {
            let mut json = serde_json::to_string_pretty(&report)
                .context("cannot encode the report as JSON")?;
            json.push('\n');
            json
        }
    };
    print!("{out}");
    Ok(())
}

/// Left-aligns `rows` in columns two spaces apart, each line indented.
fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(max) if *max < w => *max = w,
                Some(_) => {}
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(v: Option<&str>) -> &str {
    v.filter(|s| !s.is_empty()).unwrap_or("-")
}

fn package_line(p: &Package) -> String {
    format!(
        "{} {}",
        p.name,
        p.version.as_deref().unwrap_or("(not installed)")
    )
}

/// A string field of the manifest, or `-`.
fn manifest_str<'a>(m: &'a serde_json::Value, pointer: &str) -> &'a str {
    m.pointer(pointer).and_then(|v| v.as_str()).unwrap_or("-")
}

/// One label per block, values aligned after it; continuation lines of a
/// value are indented to the same column.
fn field(out: &mut String, label: &str, lines: &[String]) {
    const WIDTH: usize = 14;
    let mut first = true;
    for l in lines {
        let head = if first { label } else { "" };
        out.push_str(&format!("{head:<WIDTH$}{l}\n"));
        first = false;
    }
    if lines.is_empty() {
        out.push_str(&format!("{label:<WIDTH$}-\n"));
    }
}

/// The report for people.
fn table(r: &Report) -> String {
    let mut out = String::new();
    field(&mut out, "Image", std::slice::from_ref(&r.image));
    field(
        &mut out,
        "Format",
        &[format!(
            "{}, {} virtual",
            r.format,
            HumanBytes(r.virtual_size)
        )],
    );
    field(
        &mut out,
        "Partitions",
        &[format!("table {}", r.partition_table.name())],
    );
    let mut rows = vec![
        ["#", "TYPE", "START", "SIZE", "FS"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    ];
    for p in &r.partitions {
        let mut fs = p.filesystem.map(|f| f.name()).unwrap_or("-").to_string();
        if p.number == r.root_partition {
            fs.push_str(" (root)");
        }
        rows.push(vec![
            p.number.to_string(),
            p.type_name.clone(),
            HumanBytes(p.start).to_string(),
            HumanBytes(p.size).to_string(),
            fs,
        ]);
    }
    out.push_str(&columns(&rows, "  "));

    let a = &r.architecture;
    let mut sources = Vec::new();
    if let Some(elf) = &a.elf {
        sources.push(format!("ELF {}: {elf}", or_dash(a.elf_file.as_deref())));
    }
    if let Some(d) = &a.dpkg {
        sources.push(format!("dpkg: {d}"));
    }
    let mut arch = or_dash(a.name.as_deref()).to_string();
    if !sources.is_empty() {
        arch.push_str(&format!(" ({})", sources.join("; ")));
    }
    field(&mut out, "Architecture", &[arch]);

    let os = &r.os;
    let mut os_line = or_dash(os.pretty_name.as_deref()).to_string();
    if let Some(c) = &os.version_codename {
        os_line.push_str(&format!(", codename {c}"));
    }
    field(&mut out, "OS", &[os_line]);

    let mut db: Vec<String> = r.database.packages.iter().map(package_line).collect();
    if let (Some(first), DatabaseSource::Manifest) = (db.first_mut(), r.database.source) {
        first.push_str("  (packages named by the manifest)");
    }
    field(&mut out, "Database", &db);

    let kernel: Vec<String> = r
        .kernel
        .files
        .iter()
        .cloned()
        .chain(r.kernel.packages.iter().map(package_line))
        .collect();
    field(&mut out, "Kernel", &kernel);

    match &r.manifest {
        Some(m) => field(
            &mut out,
            "Manifest",
            &[
                format!(
                    "{}, created {}",
                    manifest_str(m, "/name"),
                    manifest_str(m, "/created")
                ),
                format!(
                    "{} {}, source {}, release {}, arch {}",
                    manifest_str(m, "/datastore/db"),
                    manifest_str(m, "/datastore/version"),
                    manifest_str(m, "/datastore/source"),
                    manifest_str(m, "/datastore/release"),
                    manifest_str(m, "/datastore/arch"),
                ),
            ],
        ),
        None => field(&mut out, "Manifest", &["none embedded".to_string()]),
    }

    if r.users.is_empty() {
        field(&mut out, "SSH keys", &["no authorized_keys".to_string()]);
    } else {
        let n = r.users.len();
        let summary = format!(
            "{n} user{} with authorized_keys",
            if n == 1 { "" } else { "s" }
        );
        field(&mut out, "SSH keys", &[summary]);
        let mut rows = vec![
            ["USER", "UID", "FILE", "MODE", "OWNER", "KEYS"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        ];
        for u in &r.users {
            let mut keys = u.keys.len().to_string();
            if u.invalid_lines > 0 {
                keys.push_str(&format!(" (+{} invalid)", u.invalid_lines));
            }
            rows.push(vec![
                u.user.clone(),
                u.uid.to_string(),
                u.file.clone(),
                u.mode.clone(),
                u.owner_uid.to_string(),
                keys,
            ]);
        }
        out.push_str(&columns(&rows, "  "));
        for u in &r.users {
            let key_rows: Vec<Vec<String>> = u
                .keys
                .iter()
                .map(|k| {
                    let mut row = vec![
                        u.user.clone(),
                        k.key_type.clone(),
                        or_dash(k.comment.as_deref()).into(),
                    ];
                    if !k.options.is_empty() {
                        row.push(format!("[{}]", k.options.join(",")));
                    }
                    row
                })
                .collect();
            out.push_str(&columns(&key_rows, "    "));
        }
    }

    if !r.warnings.is_empty() {
        let lines: Vec<String> = r.warnings.iter().map(|w| format!("- {w}")).collect();
        field(&mut out, "Warnings", &lines);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_columns_align() {
        let rows = vec![
            vec!["a".to_string(), "bb".to_string(), "c".to_string()],
            vec!["aaa".to_string(), "b".to_string(), String::new()],
        ];
        assert_eq!(columns(&rows, " "), " a    bb  c\n aaa  b\n");
    }
}
