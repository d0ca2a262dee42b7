//! Compensation plans end to end, against real databases: propose, approve (bound to the
//! content hash, distinct identities), dry run, apply (re-check, idempotency, rate, crashes,
//! racing applies), staleness and the audit trail.

mod lifecycle;
mod races;
mod review;
mod streams;
mod targets;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use trueup::app::App;
use trueup::config::Config;
use trueup::domain::Actor;
use trueup::domain::Role;
use trueup::domain::{ActionStatus, PlanState};
use trueup::plan::apply::{self, ApplyEnv, ApplyOptions, Outcome, Rate};
use trueup::plan::targets::Targets;
use trueup::plan::{self, PlanError, Proposal};
use trueup::store::Store;

use crate::helpers::{TestPg, sqlite_file, sqlite_url};

fn actor(name: &str, role: Role) -> Actor {
    Actor {
        name: name.into(),
        role,
    }
}

/// Writes trueup.yaml and one invariant file into `dir`; returns the config's path.
fn write_config(dir: &Path, config: &str, invariants: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(dir.join("invariants/rules.yaml"), invariants).unwrap();
    let path = dir.join("trueup.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn open(config: &Path) -> App {
    App::with_config(Config::load(config).unwrap())
        .await
        .unwrap()
}

fn env<'a>(
    app: &'a App,
    targets: &'a Targets,
    who: &'a Actor,
    plan_invariant: &str,
    worker: &str,
) -> ApplyEnv<'a> {
    ApplyEnv {
        store: app.store.as_ref(),
        sources: &app.sources,
        targets,
        invariant: app
            .invariants
            .iter()
            .find(|i| i.name.as_str() == plan_invariant),
        actor: who,
        worker: worker.into(),
    }
}

/// Applies (or dry-runs) a plan to the end, without a progress display.
async fn apply_plan(
    env: &ApplyEnv<'_>,
    id: i64,
    opts: &ApplyOptions,
) -> Result<trueup::plan::apply::ApplyReport, PlanError> {
    apply::apply(env, id, opts, &CancellationToken::new(), &|_| {}).await
}

fn unlimited() -> ApplyOptions {
    ApplyOptions {
        rate: Rate::Unlimited,
        ..ApplyOptions::default()
    }
}

const EVENTS_RULES: &str = r#"invariants:
  - name: events-delivered
    severity: critical
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events"}
      right: {source: downstream, query: "SELECT event_id, amount FROM records"}
      key: event_id
    compensate:
      missing:
        sql:
          target: downstream-writer
          statement: INSERT INTO records (event_id, amount) VALUES ({{key.event_id}}, {{left.amount}})
      mismatch:
        sql:
          target: downstream-writer
          statement: UPDATE records SET amount = {{left.amount}} WHERE event_id = {{key.event_id}}
      extra:
        sql:
          target: downstream-writer
          statement: DELETE FROM records WHERE event_id = {{key.event_id}}
"#;

/// Upstream events 1..=20; downstream misses 3, 7 and 11, has a wrong amount for 5 and a
/// stray record 99: five violations, each with an SQL compensation.
async fn events_scenario(dir: &Path, store: &str, extra_config: &str) -> PathBuf {
    let mut up =
        String::from("CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL);");
    let mut down =
        String::from("CREATE TABLE records (event_id INTEGER NOT NULL, amount INTEGER NOT NULL);");
    for id in 1..=20 {
        up.push_str(&format!("INSERT INTO events VALUES ({id}, {});", id * 100));
        if ![3, 7, 11].contains(&id) {
            let amount = if id == 5 { 1 } else { id * 100 };
            down.push_str(&format!("INSERT INTO records VALUES ({id}, {amount});"));
        }
    }
    down.push_str("INSERT INTO records VALUES (99, 9900);");
    sqlite_file(&dir.join("upstream.db"), &up).await;
    sqlite_file(&dir.join("downstream.db"), &down).await;
    let config = format!(
        "store: {store}\nsources:\n  upstream: {{url: {}}}\n  downstream: {{url: {}}}\ntargets:\n  downstream-writer: {{url: {}}}\n{extra_config}",
        sqlite_url(&dir.join("upstream.db")),
        sqlite_url(&dir.join("downstream.db")),
        sqlite_url(&dir.join("downstream.db")),
    );
    write_config(dir, &config, EVENTS_RULES)
}

async fn records(dir: &Path) -> Vec<(i64, i64)> {
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(
        &dir.join("downstream.db"),
    ))
    .await
    .unwrap();
    sqlx::query_as("SELECT event_id, amount FROM records ORDER BY event_id")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

fn trueup(config: &Path) -> Command {
    crate::helpers::trueup_cli(config, "ci")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = crate::helpers::combined_output(&out);
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// A receiver that counts requests per Idempotency-Key and books each key's effect once,
/// in PostgreSQL (as a real consumer would).
mod receiver {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::HeaderMap;

    #[derive(Clone)]
    pub struct Receiver {
        pub requests: Arc<Mutex<HashMap<String, u32>>>,
        pub db: sqlx::PgPool,
    }

    async fn deliver(
        State(r): State<Receiver>,
        Path(id): Path<i64>,
        headers: HeaderMap,
        body: String,
    ) -> (axum::http::StatusCode, String) {
        let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                "no Idempotency-Key".into(),
            );
        };
        let first = {
            let mut seen = r.requests.lock().unwrap();
            let n = seen.entry(key.to_owned()).or_default();
            *n += 1;
            *n == 1
        };
        if first {
            let amount: serde_json::Value = serde_json::from_str(&body).unwrap();
            sqlx::query(
                "INSERT INTO deliveries (event_id, amount, idempotency_key) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(amount["amount"].as_i64().unwrap())
            .bind(key)
            .execute(&r.db)
            .await
            .unwrap();
        }
        (axum::http::StatusCode::OK, "{\"ok\":true}".into())
    }

    pub async fn start(r: Receiver) -> String {
        let app = axum::Router::new()
            .route("/deliveries/{id}", axum::routing::post(deliver))
            .with_state(r);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/")
    }
}

async fn post_json(url: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn get_json(url: &str) -> serde_json::Value {
    let (status, body) =
        crate::serve::call(reqwest::Method::GET, url, Some(crate::serve::VIEWER)).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn get_json_as(url: &str, token: &str) -> serde_json::Value {
    let (status, body) = crate::serve::call(reqwest::Method::GET, url, Some(token)).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}
