use std::collections::BTreeSet;
use std::path::Path;

use crate::config::Config;
use crate::domain::SourceName;
use crate::rules;

use super::{EXIT_ERROR, EXIT_OK, ValidateArgs};

pub(super) async fn run(config: Option<&Path>, args: ValidateArgs) -> anyhow::Result<u8> {
    let config = match Config::discover(config) {
        Ok(c) => c,
        Err(diags) => {
            eprintln!("{diags}");
            return Ok(EXIT_ERROR);
        }
    };
    let path = args.path.unwrap_or_else(|| config.invariants_dir.clone());
    let sources: BTreeSet<SourceName> = config.sources.keys().cloned().collect();
    match rules::load(&path, &sources) {
        Ok(invariants) => {
            println!(
                "{}: {} invariant{} OK",
                path.display(),
                invariants.len(),
                if invariants.len() == 1 { "" } else { "s" }
            );
            Ok(EXIT_OK)
        }
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!(
                "\n{} problem{} found",
                diags.0.len(),
                if diags.0.len() == 1 { "" } else { "s" }
            );
            Ok(EXIT_ERROR)
        }
    }
}
