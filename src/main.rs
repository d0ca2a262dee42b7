use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    trueup::disable_huge_pages();
    // Test builds read FAILPOINTS (docs/reliability.md); in a release build this does nothing.
    let _faults = fail::FailScenario::setup();
    let cli = trueup::cli::Cli::parse();
    trueup::cli::run(cli)
}
