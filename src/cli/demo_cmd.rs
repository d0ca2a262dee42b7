use crate::app::App;
use crate::config::Config;
use crate::demo;

use super::{DemoArgs, check};

pub(super) async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let dir = &args.dir;
    let config_path = if args.repair {
        demo::repair(dir).await?;
        println!(
            "Repaired two planted problems in {}: booked payment 17 in the ledger, removed the stray entry for payment 901.\n",
            dir.display()
        );
        dir.join("trueup.yaml")
    } else {
        let path = demo::create(dir).await?;
        println!(
            "Created a demo in {}: a shop and a ledger (SQLite) with planted problems, four invariants in {}, and {}.\n",
            dir.display(),
            dir.join("invariants/demo.yaml").display(),
            path.display()
        );
        path
    };
    let config = Config::load(&config_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let app = App::with_config(config).await?;
    let outcomes = app.check(&[]).await;
    app.close().await;
    let outcomes = outcomes?;
    print!("{}", check::render(&outcomes));

    let c = format!("trueup --config {}", config_path.display());
    if args.repair {
        println!("\nThe two repaired violations are now resolved; the rest stay open.");
        println!("  {c} violations --status resolved");
    } else {
        let planted: u64 = demo::PLANTED.iter().map(|(_, _, n)| n).sum();
        println!(
            "\nPlanted: {planted} violations across 4 invariants, plus {} payment inside its grace period.",
            demo::NOT_YET_DUE
        );
        println!("\nTry next:");
        println!("  # the ledger of open violations, and one kind as JSON");
        println!("  {c} violations");
        println!("  {c} violations --kind mismatch --format json");
        println!("  # check again: the same violations, now \"still open\"");
        println!("  {c} check");
        println!("  # repair two of them, then check: they resolve");
        println!("  trueup demo --dir {} --repair", dir.display());
        println!("  # lint the invariant files");
        println!("  {c} validate");
    }
    Ok(check::exit_code(&outcomes))
}
