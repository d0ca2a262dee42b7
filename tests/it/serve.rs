//! `trueup serve`: the scheduler, metrics and shutdown, against real sources.

use std::path::Path;
use std::time::{Duration, Instant};

use trueup::config::Config;
use trueup::domain::HumanDuration;
use trueup::domain::RunStatus;

use crate::helpers::TestPg;
use crate::helpers::wait_for;

/// Tokens the test configs accept, one per role.
pub const VIEWER: &str = "viewer-token-0123456789abcdef";
pub const OPERATOR: &str = "operator-token-0123456789abcdef";
pub const APPROVER: &str = "approver-token-0123456789abcdef";
pub const ADMIN: &str = "admin-token-0123456789abcdef";

/// A `serve:` block with one token per role (given as hashes, as a config file would).
pub(crate) fn tokens_yaml(extra: &str) -> String {
    let hash = |t: &str| hex::encode(trueup::config::ApiToken::digest(t));
    format!(
        "serve:\n{extra}  tokens:\n    - {{name: vera, role: viewer, sha256: {}}}\n    - {{name: otto, role: operator, sha256: {}}}\n    - {{name: april, role: approver, sha256: {}}}\n    - {{name: ada, role: admin, sha256: {}}}\n",
        hash(VIEWER),
        hash(OPERATOR),
        hash(APPROVER),
        hash(ADMIN)
    )
}

pub(crate) async fn get(url: &str) -> (u16, String) {
    call(reqwest::Method::GET, url, Some(VIEWER)).await
}

pub(crate) async fn call(method: reqwest::Method, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of one sample in the exposition text.
pub(crate) fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The demo, with every invariant scheduled every second.
async fn demo_every_second(dir: &Path) -> Config {
    crate::helpers::demo_with(dir, Some("* * * * * *"), &tokens_yaml("")).await
}

#[tokio::test]
async fn scheduled_invariants_run_on_time_one_at_a_time_and_show_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_every_second(dir.path()).await;
    let config_store = config.store.clone();
    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();
    let store = std::sync::Arc::clone(&server.store);

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);
    let names = [
        "payments-ledger",
        "fulfilled-orders-paid",
        "subscriptions-entitlements",
        "payment-lifecycle",
    ];
    wait_for(
        "three runs of every invariant",
        Duration::from_secs(20),
        || {
            let store = std::sync::Arc::clone(&store);
            async move {
                let mut all = true;
                for name in names {
                    let runs = store.runs(Some(name), 100).await.unwrap();
                    all &= runs
                        .iter()
                        .filter(|r| r.status == RunStatus::Succeeded)
                        .count()
                        >= 3;
                }
                all
            }
        },
    )
    .await;

    let (status, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    for name in names {
        let runs = sample(
            &metrics,
            &format!("trueup_invariant_runs_total{{invariant=\"{name}\",status=\"succeeded\"}}"),
        );
        assert!(runs.unwrap_or(0.0) >= 3.0, "{name}: {runs:?}\n{metrics}");
        assert_eq!(
            sample(
                &metrics,
                &format!("trueup_invariant_healthy{{invariant=\"{name}\"}}")
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        sample(
            &metrics,
            "trueup_invariant_violations{invariant=\"payments-ledger\",kind=\"missing\",severity=\"critical\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert!(metrics.contains("trueup_invariant_run_duration_seconds_bucket"));
    // The same runs and their violations through the API.
    let (status, body) = get(&format!("{base}/api/v1/runs?invariant=payments-ledger")).await;
    assert_eq!(status, 200);
    let runs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(runs["items"].as_array().unwrap().len() >= 3, "{runs:#}");
    let (_, body) = get(&format!(
        "{base}/api/v1/violations?invariant=payments-ledger&limit=1000"
    ))
    .await;
    let open: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(open["items"].as_array().unwrap().len(), 8);
    assert!(
        metrics.contains("trueup_http_requests_total{route=\"/healthz\",status=\"200\"} 1"),
        "{metrics}"
    );

    tokio::time::timeout(Duration::from_secs(15), server.stop())
        .await
        .expect("shutdown within the grace period");

    // One run at a time per invariant, and nothing left running.
    let store = trueup::store::open(&config_store).await.unwrap();
    for name in names {
        let mut runs = store.runs(Some(name), 1000).await.unwrap();
        runs.reverse();
        assert!(
            runs.iter().all(|r| r.status != RunStatus::Running),
            "{name}"
        );
        for pair in runs.windows(2) {
            let finished = pair[0].finished_at.unwrap();
            assert!(
                finished <= pair[1].started_at,
                "{name}: runs {} and {} overlap",
                pair[0].id,
                pair[1].id
            );
        }
    }
}

/// A serve config in `dir` with one check, `slow`, on `schedule`, whose query takes `secs`
/// seconds on PostgreSQL, and `serve_settings` beside the test tokens.
fn slow_invariant(
    dir: &Path,
    db: &TestPg,
    schedule: &str,
    secs: f64,
    serve_settings: &str,
) -> Config {
    std::fs::create_dir(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/slow.yaml"),
        format!(
            "invariants:\n  - name: slow\n    schedule: \"{schedule}\"\n    check:\n      source: pg\n      query: SELECT 1 AS id FROM (SELECT pg_sleep({secs})) AS s\n      key: id\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("trueup.yaml"),
        format!(
            "store: sqlite://trueup.db\nsources:\n  pg:\n    url: {}\n{}",
            db.reader_url,
            tokens_yaml(serve_settings)
        ),
    )
    .unwrap();
    Config::load(&dir.join("trueup.yaml")).unwrap()
}

#[tokio::test]
async fn a_fire_time_that_comes_while_a_requested_run_goes_on_is_recorded_as_missed() {
    let db = TestPg::new().await;
    let dir = tempfile::tempdir().unwrap();
    // Runs of 2.5 s every 3 s: the schedule alone never overlaps itself.
    let config = slow_invariant(
        dir.path(),
        &db,
        "*/3 * * * * *",
        2.5,
        "  run_timeout: 30s\n",
    );
    let config_store = config.store.clone();
    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();

    // Someone asks for runs over and over: each one that starts holds the invariant for
    // 2.5 s, and the fire times that come meanwhile cannot run.
    let until = Instant::now() + Duration::from_secs(10);
    let mut requested = 0;
    while Instant::now() < until {
        let (status, body) = call(
            reqwest::Method::POST,
            &format!("{base}/api/v1/invariants/slow/runs"),
            Some(OPERATOR),
        )
        .await;
        match status {
            200 => requested += 1,
            409 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("{other}: {body}"),
        }
    }
    server.stop().await;

    // Every fire time has its outcome in the store: a run, or a recorded miss.
    let store = trueup::store::open(&config_store).await.unwrap();
    let ticks = store.ticks("slow", 100).await.unwrap();
    let without: Vec<_> = ticks
        .iter()
        .filter(|t| !t.missed && t.run_id.is_none())
        .collect();
    assert!(
        without.is_empty(),
        "fire times with no outcome: {without:?}"
    );
    let missed = ticks.iter().filter(|t| t.missed).count();
    assert!(
        requested >= 2 && missed >= 1,
        "{requested} requested runs, {missed} missed fire times: {ticks:?}"
    );
    // The requested runs are runs of their own, linked to no fire time.
    let runs = store.runs(Some("slow"), 100).await.unwrap();
    let scheduled = ticks.iter().filter(|t| t.run_id.is_some()).count();
    assert_eq!(runs.len(), scheduled + requested, "{runs:?}");
}

#[tokio::test]
async fn a_run_over_its_timeout_fails_counts_missed_ticks_and_shutdown_cancels_the_run_in_flight() {
    let db = TestPg::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = slow_invariant(
        dir.path(),
        &db,
        "* * * * * *",
        3.0,
        "  run_timeout: 1s\n  shutdown_grace: 200ms\n",
    );
    let server = crate::helpers::TestServer::start(config.clone()).await;
    let base = server.base.clone();
    let store = std::sync::Arc::clone(&server.store);

    wait_for("two timed-out runs", Duration::from_secs(15), || {
        let store = std::sync::Arc::clone(&store);
        async move {
            let runs = store.runs(Some("slow"), 100).await.unwrap();
            runs.iter()
                .filter(|r| r.status == RunStatus::Failed)
                .count()
                >= 2
        }
    })
    .await;
    let runs = store.runs(Some("slow"), 100).await.unwrap();
    let failed = runs.iter().find(|r| r.status == RunStatus::Failed).unwrap();
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("timed out after 1s"),
        "{:?}",
        failed.error
    );
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(
        sample(&metrics, "trueup_invariant_healthy{invariant=\"slow\"}"),
        Some(0.0)
    );
    assert!(
        sample(
            &metrics,
            "trueup_invariant_evaluation_failures_total{invariant=\"slow\"}"
        )
        .unwrap()
            >= 2.0
    );
    // Each 1 s run overruns its 1 s schedule, so ticks are skipped, never run in parallel.
    assert!(
        sample(
            &metrics,
            "trueup_invariant_missed_ticks_total{invariant=\"slow\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    server.stop().await;

    // A long run at shutdown is cancelled after the grace period and recorded as cancelled.
    let mut config = config;
    config.serve.run_timeout = HumanDuration::parse("30s").unwrap();
    let config_store = config.store.clone();
    let server = crate::helpers::TestServer::start(config).await;
    let store = std::sync::Arc::clone(&server.store);
    wait_for("a run in flight", Duration::from_secs(5), || {
        let store = std::sync::Arc::clone(&store);
        async move {
            store
                .runs(Some("slow"), 1)
                .await
                .unwrap()
                .first()
                .is_some_and(|r| r.status == RunStatus::Running)
        }
    })
    .await;
    let asked = Instant::now();
    server.stop().await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let store = trueup::store::open(&config_store).await.unwrap();
    let last = &store.runs(Some("slow"), 1).await.unwrap()[0];
    assert_eq!(last.status, RunStatus::Cancelled, "{last:?}");
    assert!(last.error.as_deref().unwrap().contains("shutting down"));
}

/// The demo under `serve`, with nothing scheduled (runs only when asked).
async fn demo_on_demand(dir: &Path) -> Config {
    crate::helpers::demo_with(dir, None, &tokens_yaml("")).await
}

#[tokio::test]
async fn every_route_checks_its_token_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::TestServer::start(demo_on_demand(dir.path()).await).await;
    let base = server.base.clone();
    let tokens = [
        (trueup::domain::Role::Viewer, VIEWER),
        (trueup::domain::Role::Operator, OPERATOR),
        (trueup::domain::Role::Approver, APPROVER),
        (trueup::domain::Role::Admin, ADMIN),
    ];
    let endpoints = trueup::http::endpoints();
    assert!(endpoints.len() >= 10);
    for e in &endpoints {
        let url = format!(
            "{base}{}",
            e.path
                .replace("{name}", "fulfilled-orders-paid")
                .replace("{id}", "999999")
        );
        let method = reqwest::Method::from_bytes(e.method.as_str().as_bytes()).unwrap();
        let Some(needed) = e.role else {
            // A webhook's signature, not a token, is its credential; no log has this name.
            let expected = if e.path.starts_with("/ingest/") {
                404
            } else {
                200
            };
            assert_eq!(
                call(method, &url, None).await.0,
                expected,
                "{} {}",
                e.method,
                e.path
            );
            continue;
        };
        assert_eq!(
            call(method.clone(), &url, None).await.0,
            401,
            "no token: {} {}",
            e.method,
            e.path
        );
        assert_eq!(
            call(method.clone(), &url, Some("not-a-token-of-ours-at-all"))
                .await
                .0,
            401,
            "wrong token: {} {}",
            e.method,
            e.path
        );
        for (role, token) in tokens {
            let (status, body) = call(method.clone(), &url, Some(token)).await;
            if role < needed {
                assert_eq!(status, 403, "{role} on {} {}: {body}", e.method, e.path);
                assert!(body.contains(&format!("this needs {needed}")), "{body}");
            } else if (e.path.starts_with("/api/v1/plans") && e.path != "/api/v1/plans")
                || e.path.starts_with("/api/v1/silences/")
            {
                // Past the role check, a plan or silence that does not exist is the handler's
                // answer.
                assert_eq!(status, 404, "{role} on {} {}: {body}", e.method, e.path);
            } else if e.path.starts_with("/api/v1/incidents/")
                || e.path.starts_with("/api/v1/logs/")
            {
                // No incident or event log is named like the invariant the test puts in
                // `{name}`.
                assert_eq!(status, 404, "{role} on {} {}: {body}", e.method, e.path);
            } else if (e.method == axum::http::Method::POST
                && ["/api/v1/plans", "/api/v1/incidents", "/api/v1/silences"].contains(&e.path))
                || e.path == "/api/v1/trace"
            {
                // A body, or for a trace its `key`, is required.
                assert_eq!(status, 400, "{role} on {} {}: {body}", e.method, e.path);
            } else {
                assert!(
                    status == 200,
                    "{role} on {} {}: {status} {body}",
                    e.method,
                    e.path
                );
            }
        }
        if e.mutating {
            assert!(
                needed > trueup::domain::Role::Viewer,
                "a viewer must not change anything: {}",
                e.path
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_api_runs_lists_pages_and_audits() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::TestServer::start(demo_on_demand(dir.path()).await).await;
    let base = server.base.clone();

    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{base}/api/v1/invariants/payments-ledger/runs"),
        Some(OPERATOR),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let outcome: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["status"], "succeeded");
    assert_eq!(outcome["change"]["new"], 8);

    let (_, body) = get(&format!("{base}/api/v1/invariants")).await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ledger = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "payments-ledger")
        .unwrap();
    assert_eq!(ledger["state"]["health"], "ok");
    assert_eq!(ledger["state"]["open_violations"], 8);
    assert_eq!(ledger["severity"], "critical");

    // Keyset pages cover every violation exactly once.
    let mut seen = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let url = match after {
            Some(a) => {
                format!("{base}/api/v1/violations?invariant=payments-ledger&limit=3&after={a}")
            }
            None => format!("{base}/api/v1/violations?invariant=payments-ledger&limit=3"),
        };
        let (status, body) = get(&url).await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_i64().unwrap()),
        );
        match page["next_after"].as_i64() {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
    let (_, body) = get(&format!("{base}/api/v1/violations?kind=mismatch")).await;
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (status, body) = get(&format!("{base}/api/v1/violations?status=broken")).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("unknown variant `broken`, expected one of `active`, `open`, `reopened`, `resolved`, `all`"),
        "{body}"
    );
    let (status, _) = get(&format!("{base}/api/v1/invariants/no-such-thing")).await;
    assert_eq!(status, 404);

    // A path, query string or body the route cannot read is refused in the same JSON body as
    // every other refusal (axum's own refusals are text/plain), saying which part and why.
    let client = reqwest::Client::new();
    let unreadable = [
        (
            client.get(format!("{base}/api/v1/runs?limit=abc")),
            "the query string is not one this route takes",
            "limit",
        ),
        (
            client.get(format!("{base}/api/v1/plans/abc")),
            "the path does not name what this route takes",
            "abc",
        ),
        (
            client
                .post(format!("{base}/api/v1/plans"))
                .header("content-type", "application/json")
                .body("{\"invariant\": "),
            "the body is not the JSON this route takes",
            "EOF",
        ),
        (
            client
                .post(format!("{base}/api/v1/plans"))
                .header("content-type", "application/json")
                .body("{\"invariant\": 7}"),
            "the body is not the JSON this route takes",
            "invalid type",
        ),
    ];
    for (request, says, names) in unreadable {
        let response = request.bearer_auth(ADMIN).send().await.unwrap();
        let status = response.status().as_u16();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(matches!(status, 400 | 422), "{status} {body}");
        assert_eq!(kind, "application/json", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(says) && message.contains(names),
            "{body}"
        );
        assert!(
            matches!(
                body["error"].as_str(),
                Some("bad_request" | "unprocessable")
            ),
            "{body}"
        );
    }

    // The run request is in the audit log, with who asked.
    let (_, body) = call(
        reqwest::Method::GET,
        &format!("{base}/api/v1/audit"),
        Some(ADMIN),
    )
    .await;
    let audit: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = &audit["items"][0];
    assert_eq!(
        (
            entry["actor"].as_str(),
            entry["action"].as_str(),
            entry["target"].as_str()
        ),
        (
            Some("otto"),
            Some("run.requested"),
            Some("invariant:payments-ledger")
        )
    );

    // The OpenAPI document lists exactly the routes the server has.
    let (_, body) = get(&format!("{base}/api/v1/openapi.json")).await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let documented: std::collections::BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {p}", m.to_uppercase()))
        })
        .collect();
    let served: std::collections::BTreeSet<String> = trueup::http::endpoints()
        .iter()
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert_eq!(documented, served);

    server.stop().await;
}

/// promtool from Debian's prometheus package; .ci/run installs it.
fn promtool() -> std::process::Command {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is missing: .ci/run installs it (apt-get install prometheus)"
    );
    std::process::Command::new("promtool")
}

#[tokio::test]
async fn promtool_accepts_the_metrics_and_the_shipped_alerting_rules() {
    let dir = tempfile::tempdir().unwrap();
    // A channel, so the notification series exist too (its deliveries fail: nothing listens).
    let config = crate::helpers::demo_with(
        dir.path(),
        Some("* * * * * *"),
        &format!(
            "{}notifications:\n  channels:\n    ops:\n      webhook: {{url: \"http://127.0.0.1:9/hook\"}}\n",
            tokens_yaml("")
        ),
    )
    .await;
    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();
    wait_for("a first round of runs", Duration::from_secs(10), || async {
        let (_, m) = get(&format!("{base}/metrics")).await;
        sample(
            &m,
            "trueup_invariant_runs_total{invariant=\"payment-lifecycle\",status=\"succeeded\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    // The SLO figures are measured from the store every few seconds: wait for a measure that
    // holds a run.
    let ledger_sli = "trueup_slo_sli_ratio{invariant=\"payments-ledger\"}";
    wait_for("the SLOs measured", Duration::from_secs(15), || async {
        let (_, m) = get(&format!("{base}/metrics")).await;
        sample(&m, ledger_sli).is_some()
    })
    .await;
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    server.stop().await;
    // payments-ledger: 99.9% over 30 days, its violations opened seconds ago.
    let ledger = |name: &str| {
        sample(
            &metrics,
            &format!("{name}{{invariant=\"payments-ledger\"}}"),
        )
    };
    assert_eq!(ledger("trueup_slo_objective_ratio"), Some(0.999));
    assert_eq!(ledger("trueup_slo_breaching"), Some(0.0));
    assert_eq!(ledger("trueup_slo_sli_ratio"), Some(1.0));
    assert_eq!(ledger("trueup_slo_error_budget_remaining_ratio"), Some(1.0));
    assert_eq!(ledger("trueup_slo_error_budget_seconds"), Some(2592.0));
    assert_eq!(ledger("trueup_slo_breach_seconds"), Some(0.0));
    // An invariant without an objective has no SLO series.
    assert!(!metrics.contains("trueup_slo_objective_ratio{invariant=\"payment-lifecycle\"}"));

    let mut check = promtool()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
    }
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus");
    for file in ["trueup-alerts.yml", "trueup-slo.yml"] {
        let rules = examples.join(file);
        let out = promtool()
            .args(["check", "rules"])
            .arg(&rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules {file}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every metric the rules use is one trueup exports.
        let text = std::fs::read_to_string(&rules).unwrap();
        for name in text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("trueup_"))
        {
            assert!(
                metrics.lines().any(|l| l
                    .strip_prefix(name)
                    .is_some_and(|r| r.starts_with(['{', ' ']))),
                "{file} uses {name}, which /metrics does not export"
            );
        }
    }
    // The burn-rate alerts fire and clear as their unit tests say.
    let out = promtool()
        .current_dir(&examples)
        .args(["test", "rules", "trueup-slo.test.yml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules trueup-slo.test.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn invariant_files_reload_on_change_and_a_bad_reload_keeps_the_running_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_every_second(dir.path()).await;
    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();
    let file = dir.path().join("invariants/demo.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    // As an editor saves: the poller never sees half a file.
    let save = |text: String| {
        let staged = dir.path().join("demo.yaml.saving");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, &file).unwrap();
    };
    let names = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let mut n: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    let metric = |name: String| {
        let base = base.clone();
        async move {
            let (_, m) = get(&format!("{base}/metrics")).await;
            sample(&m, &name)
        }
    };
    let runs = |invariant: &str| {
        metric(format!(
            "trueup_invariant_runs_total{{invariant=\"{invariant}\",status=\"succeeded\"}}"
        ))
    };
    wait_for("first runs", Duration::from_secs(10), || async {
        runs("payment-lifecycle").await.unwrap_or(0.0) >= 1.0
    })
    .await;

    // A broken edit: refused, the five invariants keep running.
    save(original.replace("severity: high", "severity: urgent"));
    wait_for("the refused reload", Duration::from_secs(10), || async {
        metric("trueup_config_reloads_total{result=\"failure\"}".into()).await == Some(1.0)
    })
    .await;
    assert_eq!(
        metric("trueup_config_last_reload_successful".into()).await,
        Some(0.0)
    );
    let (_, body) = get(&format!("{base}/api/v1/invariants")).await;
    assert_eq!(names(&body).len(), 5);
    let before = runs("payment-lifecycle").await.unwrap();
    wait_for(
        "the old set to keep running after a refused reload",
        Duration::from_secs(10),
        || async { runs("payment-lifecycle").await.unwrap() > before },
    )
    .await;

    // A good edit that removes one invariant: applied; the others keep their state.
    let start_of = original.find("  # No order is fulfilled").unwrap();
    let end_of = original.find("  # An active subscription").unwrap();
    let mut edited = original.clone();
    edited.replace_range(start_of..end_of, "");
    save(edited);
    // The gauge says 1 only once the removed invariant's loop has ended.
    wait_for("the applied reload", Duration::from_secs(10), || async {
        metric("trueup_config_reloads_total{result=\"success\"}".into()).await == Some(2.0)
    })
    .await;
    assert_eq!(
        metric("trueup_config_last_reload_successful".into()).await,
        Some(1.0)
    );
    let (_, body) = get(&format!("{base}/api/v1/invariants")).await;
    assert_eq!(
        names(&body),
        [
            "order-events-billed",
            "payment-lifecycle",
            "payments-ledger",
            "subscriptions-entitlements"
        ]
    );
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"]["last_run_id"].is_number()),
        "{list:#}"
    );
    assert_eq!(
        get(&format!("{base}/api/v1/invariants/fulfilled-orders-paid"))
            .await
            .0,
        404
    );
    // The removed invariant is no longer scheduled: while the others run on, twice each,
    // its count stays where it was.
    let removed_runs = runs("fulfilled-orders-paid").await.unwrap();
    let others = runs("payment-lifecycle").await.unwrap();
    wait_for(
        "two more ticks of the others",
        Duration::from_secs(10),
        || async { runs("payment-lifecycle").await.unwrap() >= others + 2.0 },
    )
    .await;
    assert_eq!(runs("fulfilled-orders-paid").await.unwrap(), removed_runs);
    server.stop().await;
}

#[tokio::test]
async fn the_api_creates_lists_and_expires_silences_and_explains_what_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::demo_with(dir.path(), None, &tokens_yaml("")).await;
    let server = crate::helpers::TestServer::start(config).await;
    let client = reqwest::Client::new();
    let create = |token: &'static str, body: serde_json::Value| {
        let request = client
            .post(format!("{}/api/v1/silences", server.base))
            .bearer_auth(token)
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let body = serde_json::json!({
        "matchers": ["owner=payments-team", "severity=~\"critical|high\""],
        "duration": "2h",
        "reason": "ledger upgrade"
    });
    // A viewer may look, not silence.
    assert_eq!(create(VIEWER, body.clone()).await.0, 403);
    let (status, created) = create(OPERATOR, body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "active");
    assert_eq!(created["created_by"], "otto");
    assert_eq!(
        created["matchers"],
        serde_json::json!(["owner=\"payments-team\"", "severity=~\"critical|high\""])
    );
    assert_eq!(
        created["matches_now"],
        serde_json::json!(["payments-ledger"])
    );
    for (body, says) in [
        (
            serde_json::json!({"matchers": ["team"], "duration": "1h", "reason": "x"}),
            "matcher 1: `team` is not a matcher",
        ),
        (
            serde_json::json!({"matchers": ["owner=~.*"], "duration": "1h", "reason": "x"}),
            "these matchers match every alert",
        ),
        (
            serde_json::json!({"matchers": ["owner=a"], "duration": "31d", "reason": "x"}),
            "a silence must last between 1 minute and 30 days",
        ),
    ] {
        let (status, error) = create(OPERATOR, body).await;
        assert_eq!(status, 422, "{error}");
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
    }
    let (status, list) = get(&format!("{}/api/v1/silences", server.base)).await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let expire = |id: i64| {
        let url = format!("{}/api/v1/silences/{id}/expire", server.base);
        async move { call(reqwest::Method::POST, &url, Some(OPERATOR)).await }
    };
    let id = created["id"].as_i64().unwrap();
    let (status, expired) = expire(id).await;
    assert_eq!(status, 200, "{expired}");
    assert!(expired.contains("\"state\":\"expired\""), "{expired}");
    let (status, again) = expire(id).await;
    assert_eq!(status, 409, "{again}");
    assert!(again.contains("had already ended"), "{again}");
    assert_eq!(expire(999).await.0, 404);
    let (_, active) = get(&format!("{}/api/v1/silences", server.base)).await;
    assert!(active.contains("\"items\":[]"), "{active}");
    let (_, all) = get(&format!("{}/api/v1/silences?all=true", server.base)).await;
    assert!(all.contains("ledger upgrade"), "{all}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_show_a_source_whose_one_connection_two_invariants_wait_their_turn_on() {
    let db = TestPg::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: sqlite://{}/trueup.db\nsources:\n  slow:\n    url: {}\n    pool_size: 1\n{}",
            dir.path().display(),
            db.reader_url,
            tokens_yaml("")
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
    // Two checks every second, each holding the one connection for 700 ms: at each tick one
    // of them waits for the other.
    std::fs::write(
        dir.path().join("invariants/t.yaml"),
        "invariants:\n\
         \x20 - {name: first, schedule: \"* * * * * *\", check: {source: slow, query: \"SELECT 1 AS id FROM pg_sleep(0.7)\", key: id}}\n\
         \x20 - {name: second, schedule: \"* * * * * *\", check: {source: slow, query: \"SELECT 1 AS id FROM pg_sleep(0.7)\", key: id}}\n",
    )
    .unwrap();
    let server = crate::helpers::TestServer::start(Config::load(&config).unwrap()).await;
    let base = server.base.clone();
    let series = |name: &str| format!("{name}{{source=\"slow\"}}");
    wait_for(
        "a second of reads waiting for the one connection",
        Duration::from_secs(20),
        || {
            let base = base.clone();
            let series = series("trueup_source_turn_wait_seconds_total");
            async move {
                let (_, m) = get(&format!("{base}/metrics")).await;
                sample(&m, &series).is_some_and(|waited| waited >= 1.0)
            }
        },
    )
    .await;
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(
        sample(&metrics, &series("trueup_source_pool_size")),
        Some(1.0),
        "{metrics}"
    );
    let held = sample(&metrics, &series("trueup_source_turns_held")).unwrap();
    let waiting = sample(&metrics, &series("trueup_source_turns_waiting")).unwrap();
    assert!(held <= 1.0 && waiting <= 1.0, "{metrics}");
    server.stop().await;
}
