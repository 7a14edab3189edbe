//! `dbimage flavor show|change|upload`: a database's flavors, their
//! customized values, and the flavors Nova gets from them.

use anyhow::Context as _;
use serde::Serialize;

use super::UsageError;
use crate::catalog::flavors::{self, Attr, Flavor, FlavorTable, NovaFlavor, Saved, Sizes};
use crate::cli::{
    FlavorArgs, FlavorChangeArgs, FlavorCommand, FlavorFormat, FlavorShowArgs, FlavorUploadArgs,
};
use crate::settings::Settings;

/// Runs `dbimage flavor`.
pub fn run(args: FlavorArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    match args.command {
        FlavorCommand::Show(a) => show(&a, &settings),
        FlavorCommand::Change(a) => change(&a, &settings),
        FlavorCommand::Upload(a) => upload(&a, &settings),
    }
}

/// `flavor upload`: creates the current flavors in Nova; `--dry-run`
/// prints them instead.
pub fn upload(args: &FlavorUploadArgs, settings: &Settings) -> anyhow::Result<()> {
    let flavors = flavors::nova_flavors(settings, &args.db)?;
    if args.dry_run {
        print!("{}", nova_table(&flavors));
        return Ok(());
    }
    let session = crate::commands::publish::login(&args.cloud)?;
    let nova = crate::cloud::nova::Nova::new(&session)?;
    for f in &flavors {
        let outcome = nova.ensure_flavor(f)?;
        println!("{:<24} {outcome}", f.name);
    }
    // Trove 26's API only lists flavor associations; adding them is
    // trove-manage's job on the controller.
    println!(
        "to restrict {} instances to these flavors, run on the Trove controller: \
         trove-manage datastore_version_flavor_add {} VERSION FLAVOR_IDS",
        args.db, args.db
    );
    Ok(())
}

/// `flavor show`.
fn show(args: &FlavorShowArgs, settings: &Settings) -> anyhow::Result<()> {
    let table = FlavorTable::for_settings(settings, &args.db)?;
    let out = match args.format {
        FlavorFormat::Table => {
            let mut out = rows(table.flavors(), !args.predefined);
            out.push_str(&footer(&table, args.predefined));
            out
        }
        FlavorFormat::Json => {
            let mut json = serde_json::to_string_pretty(&Listing::of(&table))
                .context("cannot encode the flavors as JSON")?;
            json.push('\n');
            json
        }
        FlavorFormat::Yaml => serde_saphyr::to_string(&Listing::of(&table))
            .context("cannot encode the flavors as YAML")?,
    };
    print!("{out}");
    Ok(())
}

/// `flavor change`: checks every value, then writes the overlay (or
/// removes it when nothing is customized any more).
fn change(args: &FlavorChangeArgs, settings: &Settings) -> anyhow::Result<()> {
    let changes: Vec<(Attr, i64)> = [
        (Attr::Vcpus, args.vcpus),
        (Attr::Memory, args.memory),
        (Attr::Root, args.root),
        (Attr::DbDisk, args.db_disk),
        (Attr::Backup, args.backup),
    ]
    .into_iter()
    .filter_map(|(attr, value)| value.map(|v| (attr, v)))
    .collect();
    if changes.is_empty() {
        return Err(UsageError(
            "flavor change: nothing to change; give at least one of -c VCPUS, -m GB, -r MB, \
             -s MB, -b MB (-1 restores a default)"
                .into(),
        )
        .into());
    }
    let mut table = FlavorTable::for_settings(settings, &args.db)?;
    for r in table.change(&args.flavor, &changes)? {
        println!(
            "{} {} rounded up to {}: Nova sizes root disks in whole GB",
            r.attr, r.given, r.used
        );
    }
    let saved = table.save()?;
    print!(
        "{}",
        rows(std::slice::from_ref(table.get(&args.flavor)?), true)
    );
    let overlay = table.overlay_path().display();
    match saved {
        Saved::Written => println!("* customized; saved in {overlay}"),
        Saved::Removed => println!("all values are predefined again; removed {overlay}"),
        Saved::NoOverlay => println!("all values are predefined; nothing to save"),
    }
    Ok(())
}

/// `flavor show -f json|yaml`: current and predefined values of each
/// flavor, and which are customized.
#[derive(Debug, Serialize)]
struct Listing<'a> {
    database: &'a str,
    overlay: String,
    flavors: Vec<Entry<'a>>,
}

/// One flavor in a [`Listing`].
#[derive(Debug, Serialize)]
struct Entry<'a> {
    name: &'a str,
    nova_name: String,
    current: Sizes,
    predefined: Sizes,
    customized: Vec<Attr>,
}

impl Listing<'_> {
    fn of(table: &FlavorTable) -> Listing<'_> {
        Listing {
            database: table.db(),
            overlay: table.overlay_path().display().to_string(),
            flavors: table
                .flavors()
                .iter()
                .map(|f| Entry {
                    name: &f.name,
                    nova_name: format!("{}.{}", table.db(), f.name),
                    current: f.current(),
                    predefined: f.predefined,
                    customized: f.custom.keys().copied().collect(),
                })
                .collect(),
        }
    }
}

/// Flavors as aligned rows: the current values with customized ones marked
/// `*`, or the predefined values.
fn rows(flavors: &[Flavor], current: bool) -> String {
    let marks = current && flavors.iter().any(|f| !f.custom.is_empty());
    let mut lines = vec![
        std::iter::once("FLAVOR".to_string())
            .chain(Attr::ALL.iter().map(|a| a.key().to_uppercase()))
            .collect::<Vec<_>>(),
    ];
    for f in flavors {
        let sizes = if current { f.current() } else { f.predefined };
        let mut line = vec![f.name.clone()];
        for attr in Attr::ALL {
            let value = sizes.get(attr);
            line.push(match (marks, f.custom.contains_key(&attr)) {
                (false, _) => value.to_string(),
                (true, true) => format!("{value}*"),
                (true, false) => format!("{value} "),
            });
        }
        lines.push(line);
    }
    aligned(&lines)
}

/// What follows the table of `flavor show`: where customized values live.
fn footer(table: &FlavorTable, predefined: bool) -> String {
    let overlay = table.overlay_path().display();
    let db = table.db();
    match (table.is_customized(), predefined) {
        (true, false) => format!(
            "* customized in {overlay}; `dbimage flavor show -d {db} -p` shows the predefined values\n"
        ),
        (true, true) => format!(
            "predefined values; {overlay} customizes some (`dbimage flavor show -d {db}`)\n"
        ),
        (false, _) => {
            format!("no customized values; `dbimage flavor change` keeps them in {overlay}\n")
        }
    }
}

/// `flavor upload --dry-run`: what Nova would get.
fn nova_table(flavors: &[NovaFlavor]) -> String {
    let mut lines = vec![
        [
            "NAME",
            "VCPUS",
            "RAM_MB",
            "DISK_GB",
            "EPHEMERAL_GB",
            "EXTRA_SPECS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for f in flavors {
        let specs: Vec<String> = f
            .extra_specs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(vec![
            f.name.clone(),
            f.vcpus.to_string(),
            f.ram_mb.to_string(),
            f.disk_gb.to_string(),
            f.ephemeral_gb.to_string(),
            specs.join(" "),
        ]);
    }
    aligned(&lines)
}

/// A header line and lines of cells as columns two spaces apart: the first
/// column and text to the left, columns of numbers to the right.
fn aligned(lines: &[Vec<String>]) -> String {
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let column = |i: usize| lines.iter().filter_map(move |l| l.get(i));
    let widths: Vec<usize> = (0..cols)
        .map(|i| column(i).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let numeric: Vec<bool> = (0..cols)
        .map(|i| {
            i > 0
                && column(i)
                    .skip(1)
                    .all(|c| c.starts_with(|ch: char| ch.is_ascii_digit()))
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells = line
            .iter()
            .zip(widths.iter().zip(&numeric))
            .map(|(cell, (&w, &right))| {
                if right {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            });
        out.push_str(cells.collect::<Vec<_>>().join("  ").trim_end());
        out.push('\n');
    }
    out
}
