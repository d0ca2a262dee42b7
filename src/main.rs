use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = trueup::cli::Cli::parse();
    trueup::cli::run(cli)
}
