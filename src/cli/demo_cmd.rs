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
            "Created a demo in {}: a shop and a ledger (SQLite) and a payment provider's HTTP API (served by trueup itself) with planted problems, six invariants in {}, and {}.\n",
            dir.display(),
            dir.join("invariants").display(),
            path.display()
        );
        path
    };
    let config = Config::load(&config_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    super::serve_demo_provider(&config).await;
    let app = App::with_config(config).await?;
    let outcomes = app.check(&[], &super::local_actor(), false).await;
    app.close().await;
    let outcomes = outcomes?;
    print!("{}", check::render(&outcomes));

    // Show commands the user can paste: the program as it was invoked (under `cargo run` that
    // is target/release/trueup, not a `trueup` on PATH).
    let program = std::env::args()
        .next()
        .filter(|p| p.contains('/'))
        .unwrap_or_else(|| "trueup".into());
    let c = format!("{program} --config {}", config_path.display());
    if args.repair {
        println!("\nThe two repaired violations are now resolved; the rest stay open.");
        println!("  {c} violations --status resolved");
    } else {
        let planted: u64 = demo::PLANTED.iter().map(|(_, _, n)| n).sum();
        let invariants: std::collections::BTreeSet<&str> =
            demo::PLANTED.iter().map(|(i, _, _)| *i).collect();
        println!(
            "\nPlanted: {planted} violations across {} invariants, plus {} payment inside its grace period.",
            invariants.len(),
            demo::NOT_YET_DUE
        );
        println!(
            "\nThe console (the 2 AM flow: the gap on a chart, a dry run, the replay, incidents):"
        );
        println!("  {c} serve");
        match demo::console_token(dir) {
            Some(token) => println!(
                "  then open http://{}/ui/ and sign in with this token (also in {}): {token}",
                demo::CONSOLE,
                dir.join(demo::TOKEN_FILE).display()
            ),
            None => println!("  then open http://{}/ui/", demo::CONSOLE),
        }
        println!("\nTry next:");
        println!("  # the ledger of open violations, and one kind as JSON");
        println!("  {c} violations");
        println!("  {c} violations --kind mismatch --format json");
        println!("  # check again: the same violations, now \"still open\"");
        println!("  {c} check");
        println!("  # repair two of them, then check: they resolve");
        println!("  {program} demo --dir {} --repair", dir.display());
        println!(
            "  # review the proposed repair of payments-ledger: a diff of SQL with bound values"
        );
        println!("  {c} plans");
        println!("  {c} plan show 1");
        println!("  # it is critical: two different people approve it, then a dry run, then apply");
        println!("  TRUEUP_ACTOR=alice {c} plan approve 1");
        println!("  TRUEUP_ACTOR=bob {c} plan approve 1");
        println!("  {c} apply 1 --dry-run");
        println!("  {c} apply 1");
        println!("  {c} audit --plan 1");
        let (from, to) = demo::outage_window(chrono::Utc::now());
        println!(
            "  # billing lost three hours of order events: see the gap, dry-run the replay, run it"
        );
        println!("  {c} violations -i order-events-billed --histogram --bucket 1h");
        println!(
            "  {c} replay -i order-events-billed --from {} --to {}",
            from.format("%Y-%m-%dT%H:%M:%SZ"),
            to.format("%Y-%m-%dT%H:%M:%SZ")
        );
        println!(
            "  # an incident over the last week, and its closure report (blockers until repaired)"
        );
        println!(
            "  {c} incident open demo-week --from {} -i payments-ledger",
            (chrono::Utc::now() - chrono::TimeDelta::days(8)).format("%Y-%m-%dT00:00:00Z")
        );
        println!("  {c} incident report demo-week -f html -o report.html");
        println!("  {c} incident close demo-week");
        println!("  # lint the invariant files");
        println!("  {c} validate");
    }
    // The demo succeeds when it finds what it planted; anything else is a bug worth a non-zero
    // exit. (`check` on the same data exits 1: violations are open.)
    if outcomes.iter().any(|e| e.run.failed()) {
        return Ok(super::EXIT_ERROR);
    }
    if !args.repair {
        let mut found = std::collections::BTreeMap::new();
        for o in outcomes.iter().map(|e| &e.run) {
            for (kind, n) in &o.stats.counts {
                found.insert((o.invariant.clone(), kind.to_string()), *n);
            }
        }
        let planted: std::collections::BTreeMap<(String, String), u64> = demo::PLANTED
            .iter()
            .map(|(i, k, n)| ((i.to_string(), k.to_string()), *n))
            .collect();
        if found != planted {
            eprintln!("error: the demo found {found:?} but planted {planted:?}");
            return Ok(super::EXIT_VIOLATIONS);
        }
    }
    Ok(super::EXIT_OK)
}
