use std::path::Path;

use crate::config::Config;
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
    let known = rules::Known::of(&config);
    match rules::load(&path, &known) {
        Ok(invariants) => {
            println!(
                "{}: {} invariant{} OK",
                path.display(),
                invariants.len(),
                if invariants.len() == 1 { "" } else { "s" }
            );
            for note in invariants.iter().flat_map(|i| rules::advice(i, &known)) {
                println!("note: {note}");
            }
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
