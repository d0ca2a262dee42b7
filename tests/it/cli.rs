//! The `trueup` binary, as a user runs it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use trueup::demo::{NOT_YET_DUE, PLANTED};

fn trueup(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trueup"))
        .args(args)
        .current_dir(dir)
        .env_remove("TRUEUP_CONFIG")
        .env_remove("TRUEUP_STORE")
        .output()
        .expect("run trueup")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_demo_finds_exactly_the_planted_violations_and_the_repair_resolves_two() {
    let tmp = tempfile::tempdir().unwrap();
    let out = trueup(tmp.path(), &["demo", "--dir", "demo"]);
    let text = stdout(&out);
    // The demo succeeds when it finds exactly what it planted.
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("by kind: missing 3, extra 2, duplicate 1, mismatch 2"),
        "{text}"
    );
    assert!(text.contains("1 not yet due (within grace)"), "{text}");
    assert!(
        text.contains("6 invariants: 0 hold, 6 violated (47 open violations)"),
        "{text}"
    );
    // One side of the last invariant is the payment provider's HTTP API, served by the demo
    // process itself: 200 charges, the one in grace and the one the shop recorded as failed.
    let provider = &text[text.find("provider-charges-recorded").expect(&text)..];
    assert!(
        provider.contains("read 202 left / 201 right rows"),
        "{text}"
    );
    assert!(
        provider.contains("by kind: missing 1, mismatch 1"),
        "{text}"
    );
    assert!(provider.contains("amount_cents: 3468 ≠ 3368"), "{text}");
    // An API side's columns in the order its `columns:` declares them, as a query's.
    assert!(
        provider.contains("no right row; left: payment_id=205 amount_cents=3585 currency=EUR"),
        "{text}"
    );

    // The same counts, read from the JSON report of a second check.
    let out = trueup(
        tmp.path(),
        &["--config", "demo/trueup.yaml", "check", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: BTreeMap<(String, String), u64> = BTreeMap::new();
    for run in report.as_array().unwrap() {
        assert_eq!(run["change"]["new"], 0, "second run: nothing new");
        for (kind, n) in run["stats"]["counts"].as_object().unwrap() {
            found.insert(
                (run["invariant"].as_str().unwrap().into(), kind.clone()),
                n.as_u64().unwrap(),
            );
        }
        if run["invariant"] == "payments-ledger" {
            assert_eq!(run["stats"]["not_yet_due"], NOT_YET_DUE);
        }
    }
    let planted: BTreeMap<(String, String), u64> = PLANTED
        .iter()
        .map(|(i, k, n)| ((i.to_string(), k.to_string()), *n))
        .collect();
    assert_eq!(found, planted);

    let out = trueup(tmp.path(), &["demo", "--dir", "demo", "--repair"]);
    let text = stdout(&out);
    assert!(
        text.contains("6 violations open: 0 new, 6 still open, 0 reopened; 2 resolved"),
        "{text}"
    );
    let out = trueup(
        tmp.path(),
        &[
            "-c",
            "demo/trueup.yaml",
            "violations",
            "--status",
            "resolved",
            "-f",
            "json",
        ],
    );
    let resolved: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<(String, serde_json::Value)> = resolved
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["kind"].as_str().unwrap().to_owned(), v["key"].clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("missing".into(), serde_json::json!([17])),
            ("extra".into(), serde_json::json!([901]))
        ]
    );
    // Running the demo again starts over.
    let out = trueup(tmp.path(), &["demo", "--dir", "demo"]);
    assert!(stdout(&out).contains("47 open violations"));
}

#[test]
fn a_demo_whose_provider_port_another_program_holds_fails_that_invariant_and_resolves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = trueup(tmp.path(), &["demo", "--dir", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let config = std::fs::read_to_string(tmp.path().join("demo/trueup.yaml")).unwrap();
    let at = config.find("base_url: http://").unwrap() + "base_url: http://".len();
    let addr = config[at..].split('/').next().unwrap().to_owned();
    // Something else answers on the provider's port: every request gets a 404.
    let listener = std::net::TcpListener::bind(&addr).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
            );
        }
    });
    let out = trueup(
        tmp.path(),
        &[
            "--config",
            "demo/trueup.yaml",
            "check",
            "-i",
            "provider-charges-recorded",
        ],
    );
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(2), "{text}\n{err}");
    assert!(
        err.contains(&format!(
            "warning: cannot serve the demo's payment provider API on {addr}: another program listens there"
        )),
        "{err}"
    );
    assert!(text.contains("ERROR provider-charges-recorded"), "{text}");
    assert!(
        text.contains(&format!(
            "GET http://{addr}/v1/charges?limit=50&status=succeeded: the API answered 404 Not Found"
        )),
        "{text}"
    );
    assert!(text.contains("nothing in the ledger changed"), "{text}");
    assert!(
        text.contains(
            "1 invariant: 0 hold, 0 violated (0 open violations), 1 could not be evaluated"
        ),
        "{text}"
    );
    let out = trueup(
        tmp.path(),
        &[
            "--config",
            "demo/trueup.yaml",
            "violations",
            "-i",
            "provider-charges-recorded",
            "-f",
            "json",
        ],
    );
    let open: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        open.as_array().unwrap().len(),
        2,
        "nothing resolved: {open}"
    );
}

#[test]
fn validate_reports_three_mistakes_with_their_lines_and_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("trueup.yaml"),
        "sources:\n  shop:\n    url: sqlite://shop.db\n",
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("invariants")).unwrap();
    std::fs::write(
        tmp.path().join("invariants/broken.yaml"),
        r#"invariants:
  - name: orders-paid
    schedule: "*/5 * * *"
    check:
      source: shop
      query: SELECT id FROM orders
      key: id
  - name: payments
    severity: urgent
    reconcile:
      left: {source: shop, query: SELECT 1 AS id}
      right: {source: shop, query: SELECT 1 AS id}
      key: id
      expcet: exactly_one
"#,
    )
    .unwrap();
    let out = trueup(tmp.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("broken.yaml:")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].contains("broken.yaml:3:")
            && lines[0].contains("orders-paid")
            && lines[0].contains("schedule"),
        "{err}"
    );
    assert!(
        lines[1].contains("broken.yaml:9:") && lines[1].contains("critical, high, medium or low"),
        "{err}"
    );
    assert!(
        lines[2].contains("broken.yaml:14:") && lines[2].contains("did you mean `expect`"),
        "{err}"
    );
    assert!(err.contains("3 problems found"), "{err}");
}

#[test]
fn validate_refuses_the_queries_a_run_would_refuse_with_their_lines() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("trueup.yaml"),
        "sources:\n  shop:\n    url: sqlite://shop.db\n  pg:\n    url: postgres://reader@127.0.0.1:1/x\n",
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("invariants")).unwrap();
    std::fs::write(
        tmp.path().join("invariants/queries.yaml"),
        r#"invariants:
  - name: two-statements
    check:
      source: shop
      query: "SELECT id FROM orders; DELETE FROM orders"
      key: id
  - name: not-a-select
    check:
      source: shop
      query: DELETE FROM orders RETURNING id
      key: id
  - name: write-in-a-cte
    check:
      source: pg
      query: "WITH d AS (DELETE FROM orders RETURNING id) SELECT id FROM d"
      key: id
  - name: fine
    check:
      source: pg
      query: "SELECT id, $$a;b$$ AS note FROM orders; "
      key: id
"#,
    )
    .unwrap();
    let out = trueup(tmp.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("queries.yaml:"))
        .collect();
    assert_eq!(lines.len(), 3, "{err}");
    for (line, (at, name, says)) in lines.iter().zip([
        (":5:", "two-statements", "holds more than one statement"),
        (":10:", "not-a-select", "is a `DELETE` statement"),
        (":15:", "write-in-a-cte", "modifies data"),
    ]) {
        assert!(
            line.contains(at) && line.contains(name) && line.contains(says),
            "{line}"
        );
    }
    assert!(!err.contains("`fine`"), "{err}");
}

#[test]
fn the_shipped_invariants_validate_against_the_demo_sources() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("trueup.yaml"),
        format!(
            "invariants: {}\nsources:\n  shop:\n    url: sqlite://shop.db\n  ledger:\n    url: sqlite://ledger.db\n  provider:\n    kind: http\n    base_url: http://127.0.0.1:9/\n    allow_private_network: true\ntargets:\n  ledger-writer:\n    url: sqlite://ledger.db\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("invariants").display()
        ),
    )
    .unwrap();
    let out = trueup(tmp.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("6 invariants OK"), "{}", stdout(&out));
}

#[test]
fn an_unknown_invariant_name_is_an_error_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    trueup(tmp.path(), &["demo", "--dir", "d"]);
    let out = trueup(
        tmp.path(),
        &["-c", "d/trueup.yaml", "check", "-i", "payment-ledger"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("did you mean `payments-ledger`?"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_source_that_cannot_be_reached_fails_its_invariant_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    trueup(tmp.path(), &["demo", "--dir", "d"]);
    std::fs::remove_file(tmp.path().join("d/ledger.db")).unwrap();
    let out = trueup(
        tmp.path(),
        &["-c", "d/trueup.yaml", "check", "-i", "payments-ledger"],
    );
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(text.contains("ERROR payments-ledger"), "{text}");
    assert!(text.contains("nothing in the ledger changed"), "{text}");
    // The violations the demo found are still open: an outage resolves nothing.
    let out = trueup(
        tmp.path(),
        &[
            "-c",
            "d/trueup.yaml",
            "violations",
            "-i",
            "payments-ledger",
            "-f",
            "json",
        ],
    );
    let open: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(open.as_array().unwrap().len(), 8);
}

#[test]
fn help_lists_the_commands_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = trueup(tmp.path(), &["--help"]);
    let text = stdout(&out);
    for cmd in [
        "validate",
        "check",
        "violations",
        "runs",
        "demo",
        "Exit codes",
    ] {
        assert!(text.contains(cmd), "{text}");
    }
}

/// From `trueup demo` to a signed-in console in the one step it prints: the command, the
/// address and a token the demo's config accepts; `/` leads to the console, which has an icon.
#[tokio::test]
async fn the_demo_prints_one_step_to_a_signed_in_console() {
    let tmp = tempfile::tempdir().unwrap();
    let out = trueup(tmp.path(), &["demo", "--dir", "demo"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    // The count of invariants is the count listed.
    assert!(
        text.contains(
            "Planted: 47 violations across 6 invariants, plus 1 payment inside its grace period."
        ),
        "{text}"
    );
    assert!(text.contains("--config demo/trueup.yaml serve\n"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("then open http://127.0.0.1:8080/ui/ and sign in with this token"))
        .unwrap_or_else(|| panic!("no console line: {text}"));
    let token = line.rsplit(": ").next().unwrap().trim().to_owned();
    assert!(token.starts_with("demo-") && token.len() > 16, "{line}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("demo/console-token.txt"))
            .unwrap()
            .trim(),
        token
    );
    let config = std::fs::read_to_string(tmp.path().join("demo/trueup.yaml")).unwrap();
    assert!(
        !config.contains(&token),
        "the config keeps only the token's hash"
    );

    // Serve it (on a free port rather than 8080), and sign in with the printed token.
    let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_trueup"))
        .args([
            "--config",
            "demo/trueup.yaml",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut base = None;
    for _ in 0..300 {
        let printed = std::fs::read_to_string(tmp.path().join("serve.log")).unwrap_or_default();
        // The whole line, not the first bytes of it: the address ends where the line does.
        if let Some(at) = printed.find("serving on http://")
            && let Some(line) = printed[at..].split_inclusive('\n').next()
            && line.ends_with('\n')
        {
            base = line["serving on ".len()..]
                .split_whitespace()
                .next()
                .map(str::to_owned);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let base = base.unwrap_or_else(|| {
        let printed = std::fs::read_to_string(tmp.path().join("serve.log")).unwrap_or_default();
        panic!("serve did not print its address within 15 s:\n{printed}")
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = http.get(format!("{base}/")).send().await.unwrap();
    assert!(root.status().is_redirection(), "{}", root.status());
    assert_eq!(root.headers()["location"], "/ui/");
    let icon = http
        .get(format!("{base}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    let signed_in = http
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", base.as_str())
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        signed_in.status().as_u16(),
        303,
        "{:?}",
        signed_in.text().await
    );
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let overview = http
        .get(format!("{base}/ui/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status().as_u16(), 200);
    let page = overview.text().await.unwrap();
    assert!(page.contains("payments-ledger"), "{page}");
    assert!(page.contains(r#"<link rel="icon" href="/ui/assets/favicon.svg""#));
    let _ = serve.kill();
    let _ = serve.wait();
}

#[tokio::test]
async fn silences_are_added_listed_and_expired_from_the_cli_and_mistakes_explained() {
    use crate::helpers::{combined_output as text, trueup_cli};
    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::demo_with(dir.path(), None, "").await;
    let config = config.file.unwrap();
    let run = |args: &[&str]| {
        let out = trueup_cli(&config, "ana").args(args).output().unwrap();
        (out.status.code(), text(&out))
    };
    let (code, out) = run(&[
        "silence", "add", "-m", "team", "--for", "1h", "--reason", "x",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("error: matcher 1: `team` is not a matcher; write label=value"),
        "{out}"
    );
    let (code, out) = run(&[
        "silence",
        "add",
        "-m",
        "team=billing",
        "--for",
        "soon",
        "--reason",
        "x",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("error: --for: "), "{out}");
    let (code, out) = run(&[
        "silence",
        "add",
        "-m",
        "team=billing",
        "--for",
        "2h",
        "--reason",
        "orders replay",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("it matches 1 now: order-events-billed"),
        "{out}"
    );
    let (code, out) = run(&[
        "silence",
        "add",
        "-m",
        "team=nobody",
        "--for",
        "2h",
        "--reason",
        "typo",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("note: it matches none of the 5 invariants loaded now"),
        "{out}"
    );
    let (_, out) = run(&["silence", "list"]);
    assert!(
        out.contains("orders replay")
            && out.contains("order-events-billed")
            && out.contains("cli:ana"),
        "{out}"
    );
    let (code, out) = run(&["silence", "expire", "2"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("silence 2 expired"), "{out}");
    let (_, out) = run(&["silence", "expire", "2"]);
    assert!(out.contains("silence 2 had already ended at "), "{out}");
    let (code, out) = run(&["silence", "expire", "7"]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("error: no silence 7; `trueup silence list --all` lists them"),
        "{out}"
    );
    let (_, out) = run(&["silence", "list", "-f", "json"]);
    let active: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(active.as_array().unwrap().len(), 1, "{out}");
    let (_, out) = run(&["silence", "list", "--all"]);
    assert!(out.contains("expired by cli:ana"), "{out}");
}

#[tokio::test]
async fn a_history_whose_rows_share_a_time_reads_alike_in_every_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Each order was created and paid in the same second; half the rows were written paid
    // first. Taken in the source's order, those would be `paid` before `created`.
    let mut sql = String::from("CREATE TABLE history (order_id INTEGER, state TEXT, at TEXT);");
    for id in 1..=20 {
        let (first, second) = if id % 2 == 0 {
            ("paid", "created")
        } else {
            ("created", "paid")
        };
        sql.push_str(&format!(
            "INSERT INTO history VALUES ({id}, '{first}', '2026-12-01 10:00:00'), ({id}, '{second}', '2026-12-01 10:00:00');"
        ));
    }
    crate::helpers::sqlite_file(&dir.join("shop.db"), &sql).await;
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/orders.yaml"),
        r#"invariants:
  - name: orders-flow
    transitions:
      source: shop
      query: SELECT order_id, state, at FROM history
      key: order_id
      initial: [created]
      allowed:
        created: [paid]
        paid: []
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("trueup.yaml"),
        format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\n",
            crate::helpers::sqlite_url(&dir.join("trueup.db")),
            crate::helpers::sqlite_url(&dir.join("shop.db"))
        ),
    )
    .unwrap();
    for _ in 0..2 {
        let out = trueup(dir, &["-c", "trueup.yaml", "check"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

/// An event log with `retain` purges only what each of its readers' last full run judged:
/// `validate` says so of a reader with no schedule (which runs only when asked), and of no
/// other.
#[test]
fn validate_notes_that_a_reader_without_a_schedule_holds_a_retained_log() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("trueup.yaml"),
        "sources:\n  bus:\n    url: nats://127.0.0.1:4222\n  shop:\n    url: sqlite://shop.db\n\
         event_logs:\n  orders:\n    event_id: id\n    retain: 30d\n    from:\n      - nats: {source: bus, stream: ORDERS}\n  audit:\n    event_id: id\n    from:\n      - nats: {source: bus, stream: AUDIT}\n",
    )
    .unwrap();
    std::fs::create_dir_all(tmp.path().join("invariants")).unwrap();
    let reader = |name: &str, log: &str, schedule: &str| {
        format!(
            "  - name: {name}\n{schedule}    reconcile:\n      left:\n        source: log:{log}\n        stream:\n          columns:\n            order_id: {{path: order, type: int}}\n      right:\n        source: shop\n        query: SELECT order_id FROM orders\n      key: order_id\n"
        )
    };
    std::fs::write(
        tmp.path().join("invariants/logs.yaml"),
        format!(
            "invariants:\n{}{}{}",
            reader("unscheduled", "orders", ""),
            reader("scheduled", "orders", "    schedule: \"*/5 * * * *\"\n"),
            reader("unretained", "audit", ""),
        ),
    )
    .unwrap();
    let out = trueup(tmp.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let notes: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("note: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        notes,
        [
            "note: invariant `unscheduled` reads event log `orders` and has no `schedule`, so it runs only when asked (`trueup check`, or a run requested of `trueup serve`): the log's `retain` purges only events that each of its readers' last completed full run has judged, so `orders` keeps every event since this invariant last ran, however old; give it a `schedule:` (like `schedule: \"*/5 * * * *\"`)"
        ],
        "{}",
        stdout(&out)
    );
}
