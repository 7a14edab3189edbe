//! `dbimage datastores`: prints the catalog of supported builds.

use anyhow::Context as _;

use crate::catalog::Catalog;
use crate::cli::{DatastoresArgs, Format};
use crate::settings::Settings;

/// Runs `dbimage datastores`.
pub fn run(args: DatastoresArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let catalog = Catalog::load(&settings.data_dir.join("datastores"))?;
    let db = args.db.as_deref();
    if let Some(db) = db {
        // Rejected here because an unknown name would otherwise print an
        // empty listing that looks like "supported, no rows".
        catalog.get(db)?;
    }
    let out = match args.format {
        Format::Table => catalog.table(db),
        Format::Json => {
            let rows: Vec<_> = catalog.rows(db).collect();
            let mut json =
                serde_json::to_string_pretty(&rows).context("cannot encode the catalog as JSON")?;
            json.push('\n');
            json
        }
    };
    print!("{out}");
    Ok(())
}
