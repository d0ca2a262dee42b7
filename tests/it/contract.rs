//! The API against its OpenAPI document: the document is generated from the types the
//! handlers take and answer, and schemathesis (installed by `.ci/run`) calls every operation
//! with data made from it, with every check on — status codes and content types documented,
//! bodies of the documented shape, refusals of what the document rules out, authentication.

use crate::serve::{ADMIN, OPERATOR, call, get, tokens_yaml};

/// A demo server with something in each list: runs, violations, a plan, an incident.
async fn demo_server(dir: &std::path::Path) -> crate::helpers::TestServer {
    let config = crate::helpers::demo_with(dir, None, &tokens_yaml("")).await;
    let server = crate::helpers::TestServer::start(config).await;
    let base = &server.base;
    for name in ["payments-ledger", "order-events-billed"] {
        let (status, body) = call(
            reqwest::Method::POST,
            &format!("{base}/api/v1/invariants/{name}/runs"),
            Some(OPERATOR),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = call_json(
        &format!("{base}/api/v1/incidents"),
        serde_json::json!({"name": "billing-outage", "from": "2026-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    server
}

async fn call_json(url: &str, body: serde_json::Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(OPERATOR)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn the_document_gives_every_parameter_body_and_answer_a_schema() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(dir.path()).await;
    let (status, body) = get(&format!("{}/api/v1/openapi.json", server.base)).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        trueup::http::endpoints().len()
    );
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            let at = format!("{method} {path}");
            for p in op["parameters"].as_array().unwrap() {
                assert!(p["schema"].is_object(), "{at}: parameter {p}");
            }
            if let Some(b) = op.get("requestBody") {
                assert!(
                    b["content"]["application/json"]["schema"].is_object(),
                    "{at}: {b}"
                );
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{at}: no success documented"
            );
            for (status, r) in responses {
                let content = r["content"].as_object();
                assert!(
                    content.is_some_and(|c| {
                        c.values().all(|m| {
                            m["schema"].is_object() || m["schema"] == serde_json::json!(true)
                        })
                    }),
                    "{at} {status}: {r}"
                );
                if path.starts_with("/api/") && !status.starts_with('2') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{at} {status}: every refusal has the one error body"
                    );
                }
            }
        }
    }
    // Query parameters carry their types and bounds.
    let runs = &doc["paths"]["/api/v1/violations"]["get"]["parameters"];
    let param = |name: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}: {runs}"))
            .clone()
    };
    assert_eq!(
        param("limit")["schema"],
        serde_json::json!({"type": "integer", "minimum": 1, "maximum": 1000})
    );
    assert_eq!(param("since")["schema"]["format"], "date-time");
    let status = &param("status")["schema"];
    let status = match status.get("$ref") {
        Some(r) => doc["components"]["schemas"][r
            .as_str()
            .unwrap()
            .trim_start_matches("#/components/schemas/")]
        .clone(),
        None => status.clone(),
    };
    assert_eq!(
        status["enum"],
        serde_json::json!(["active", "open", "reopened", "resolved", "all"])
    );
    server.stop().await;
}

#[tokio::test]
async fn schemathesis_with_every_check_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(dir.path()).await;
    let url = format!("{}/api/v1/openapi.json", server.base);
    // Schema-valid data must be taken: answered 2xx, or refused for what no schema can say —
    // 404 for an id or name that does not exist, 409 for a state that does not allow it, 422
    // for a rule across fields or against what is loaded (a window that ends before it
    // starts, an invariant that is not loaded). Never 400: that is for what the document
    // rules out, and schemathesis checks that too (negative data must be refused).
    let workdir = dir.path().to_owned();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[checks.positive_data_acceptance]\nexpected-statuses = [\"2xx\", \"401\", \"403\", \"404\", \"409\", \"422\"]\n",
    )
    .unwrap();
    // A blocking child on a thread of its own: this runtime goes on serving the API.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("schemathesis")
            .args([
                "--config-file",
                config.to_str().unwrap(),
                "run",
                &url,
                "--checks",
                "all",
                "--header",
                &format!("Authorization: Bearer {ADMIN}"),
                "--max-examples",
                "10",
                "--seed",
                "20261204",
                // One worker: CPython 3.11 before 3.11.8 races in `ast.parse` across threads
                // (gh-106905), which hypothesis calls while describing its strategies.
                "--workers",
                "1",
                "--request-timeout",
                "30",
                "--max-time",
                "150",
            ])
            .env("NO_COLOR", "1")
            // Its cache and reports go beside the test's files, not into the checkout.
            .current_dir(&workdir)
            .output()
    })
    .await
    .unwrap()
    .expect("schemathesis is installed (.ci/run installs it: pip install schemathesis)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    // Its summary, for the log of a passing run too.
    eprintln!("{stdout}");
    // It called every operation it found in the document.
    let figure = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.trim().to_owned())
            .unwrap_or_else(|| panic!("no `{label}` in:\n{stdout}"))
    };
    let selected = figure("Selected:");
    let (tested, total) = selected.split_once('/').unwrap();
    assert_eq!(
        (figure("Tested:"), tested),
        (total.to_owned(), total),
        "{stdout}"
    );
    assert!(total.parse::<usize>().unwrap() >= 25, "{stdout}");
    server.stop().await;
}

/// What the Python script below reads through the generated client.
const CLIENT_SCRIPT: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from trueup_client import AuthenticatedClient
from trueup_client.api.default import (
    get_invariants, get_invariants_name, post_invariants_name_runs, get_violations, get_incidents_name,
)
from trueup_client.models import ErrorBody

client = AuthenticatedClient(base_url=sys.argv[2], token=sys.argv[3], raise_on_unexpected_status=True)
invariants = get_invariants.sync(client=client)
run = post_invariants_name_runs.sync(name="payments-ledger", client=client)
page = get_violations.sync(client=client, invariant="payments-ledger", limit=3)
missing = get_invariants_name.sync(name="no-such-invariant", client=client)
incident = get_incidents_name.sync(name="billing-outage", client=client)
print(json.dumps({
    "invariants": sorted(i.name for i in invariants.items),
    "run_status": str(run.status.value),
    "run_open_after": run.open_after,
    "page": [type(v).__name__ for v in page.items],
    "page_keys": [v.key for v in page.items],
    "next_after": page.next_after,
    "missing": [type(missing).__name__, missing.error if isinstance(missing, ErrorBody) else None],
    "incident": [incident.name, str(incident.state.value)],
}))
"#;

#[tokio::test]
async fn a_client_generated_from_the_document_reads_typed_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(dir.path()).await;
    let (status, doc) = get(&format!("{}/api/v1/openapi.json", server.base)).await;
    assert_eq!(status, 200);
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, doc).unwrap();
    // With `--meta none` the output is the package itself.
    let client_dir = dir.path().join("trueup_client");
    let script = dir.path().join("use_client.py");
    std::fs::write(&script, CLIENT_SCRIPT).unwrap();
    let base = server.base.clone();
    let (generated, used) = tokio::task::spawn_blocking(move || {
        let generated = std::process::Command::new("openapi-python-client")
            .args(["generate", "--path"])
            .arg(&doc_path)
            .arg("--output-path")
            .arg(&client_dir)
            .args(["--meta", "none"])
            .output()
            .expect("openapi-python-client is installed (.ci/run installs it from PyPI)");
        let used = std::process::Command::new("python3")
            .arg(&script)
            .arg(client_dir.parent().unwrap())
            .arg(&base)
            .arg(OPERATOR)
            .output()
            .unwrap();
        (generated, used)
    })
    .await
    .unwrap();
    let say = |o: &std::process::Output| {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(generated.status.success(), "{}", say(&generated));
    // Every schema of the document made a model: the generator warns about what it skips.
    let warnings = say(&generated);
    assert!(!warnings.contains("Unable to"), "{warnings}");
    assert!(used.status.success(), "{}", say(&used));
    let read: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&used.stdout).trim()).unwrap();
    assert!(
        read["invariants"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("payments-ledger")),
        "{read}"
    );
    assert_eq!(read["run_status"], "succeeded", "{read}");
    assert!(read["run_open_after"].as_u64().unwrap() > 0, "{read}");
    assert_eq!(
        read["page"],
        serde_json::json!(["ViolationRecord", "ViolationRecord", "ViolationRecord"]),
        "{read}"
    );
    assert!(read["next_after"].is_i64(), "{read}");
    assert_eq!(
        read["missing"],
        serde_json::json!(["ErrorBody", "not_found"])
    );
    assert_eq!(
        read["incident"],
        serde_json::json!(["billing-outage", "open"])
    );
    server.stop().await;
}
