//! The demo's payment provider: a small HTTP API over `provider.db`, listing charges the way
//! payment providers do (newest first, a page after the last item's id, `has_more`). trueup
//! serves it itself, from whichever trueup process runs on the demo folder first, so the demo
//! needs nothing but the binary.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, Row};

use super::{DemoError, amount, captured_at, currency, open};

/// The source the demo's trueup.yaml names the provider's API by.
pub const SOURCE: &str = "provider";

/// What `GET /` answers, so a second trueup process knows the port is this demo's API.
const SERVICE: &str = "trueup demo payment provider";

/// The charges: one per shop payment that got past pending, and the planted differences —
/// payment 64 was charged 1.00 more than the shop recorded, and payment 205, which the shop
/// recorded as failed, was captured after all.
pub(super) async fn seed(path: &Path, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let mut db = open(path, true).await?;
    let mut tx = db.begin().await?;
    sqlx::query(
        "CREATE TABLE charges (id TEXT PRIMARY KEY, payment_id INTEGER NOT NULL UNIQUE, amount INTEGER NOT NULL,
                               currency TEXT NOT NULL, status TEXT NOT NULL, created INTEGER NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    for id in 1..=210_i64 {
        let (status, at) = match id {
            1..=200 => ("succeeded", captured_at(id, now)),
            201 => ("succeeded", now - TimeDelta::minutes(2)),
            205 => ("succeeded", now - TimeDelta::minutes(50)),
            _ => ("failed", now - TimeDelta::hours(1)),
        };
        let charged = if id == 64 {
            amount(id) + 100
        } else {
            amount(id)
        };
        sqlx::query("INSERT INTO charges VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(format!("ch_3Qd{id:05}"))
            .bind(id)
            .bind(charged)
            .bind(currency(id))
            .bind(status)
            .bind(at.timestamp())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    db.close().await
}

/// Whether the provider's API is running for the demo in `dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// This process serves it (until it exits).
    Started,
    /// Another trueup process on this demo folder serves it already.
    Elsewhere,
}

/// Serves the provider's API of the demo in `dir` on `addr` (from its trueup.yaml) for the
/// life of this process, unless another trueup process on the same demo already does.
pub async fn serve(dir: &Path, addr: &str) -> Result<Serving, DemoError> {
    let demo = std::fs::canonicalize(dir).map_err(super::io(dir))?;
    let refused = |why: String| DemoError::ProviderPort {
        addr: addr.to_owned(),
        why,
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            start(listener, demo);
            Ok(Serving::Started)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if !serves_this_demo(addr, &demo).await {
                return Err(refused("another program listens there".into()));
            }
            // The other trueup may be a short command: when it exits, this process serves
            // the API for the rest of its own life.
            let addr = addr.to_owned();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    if let Ok(listener) = tokio::net::TcpListener::bind(&addr).await {
                        start(listener, demo);
                        return;
                    }
                }
            });
            Ok(Serving::Elsewhere)
        }
        Err(e) => Err(refused(e.to_string())),
    }
}

/// Serves the API on `listener` for the life of this process.
fn start(listener: tokio::net::TcpListener, demo: PathBuf) {
    let options = SqliteConnectOptions::new()
        .filename(demo.join("provider.db"))
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options);
    let router = Router::new()
        .route("/", get(about))
        .route("/v1/charges", get(list))
        .route("/v1/payments/{payment_id}/charge", get(charge_of_payment))
        .with_state(Api { pool, demo });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!("the demo's payment provider API stopped: {e}");
        }
    });
}

/// A port free now, outside the range the system hands out for outgoing connections (which
/// could take it between now and the API's start), so that demos in different folders never
/// answer for each other.
pub(super) fn free_port() -> std::io::Result<u16> {
    let mut last = None;
    for _ in 0..50 {
        let port = rand::random_range(20_000..32_000);
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// Whether what answers on `addr` is this demo's provider API.
async fn serves_this_demo(addr: &str, demo: &Path) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(2))
        .build()
    else {
        return false;
    };
    let Ok(answer) = client.get(format!("http://{addr}/")).send().await else {
        return false;
    };
    let Ok(about) = answer.json::<serde_json::Value>().await else {
        return false;
    };
    about["service"] == SERVICE && about["demo"] == demo.display().to_string()
}

#[derive(Clone)]
struct Api {
    pool: SqlitePool,
    demo: PathBuf,
}

async fn about(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"service": SERVICE, "demo": api.demo.display().to_string()}))
}

#[derive(serde::Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<i64>,
    starting_after: Option<String>,
}

const COLUMNS: &str = "id, payment_id, amount, currency, status, created";

fn charge(row: &sqlx::sqlite::SqliteRow) -> serde_json::Value {
    serde_json::json!({
        "id": row.get::<String, _>("id"),
        "object": "charge",
        "amount": row.get::<i64, _>("amount"),
        "currency": row.get::<String, _>("currency"),
        "status": row.get::<String, _>("status"),
        "created": row.get::<i64, _>("created"),
        "metadata": {"payment_id": row.get::<i64, _>("payment_id")},
    })
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"message": message}})),
    )
        .into_response()
}

/// `GET /v1/charges?status=&limit=&starting_after=`: newest first, `limit` (1–100, default
/// 10) per page.
async fn list(State(api): State<Api>, Query(p): Query<ListParams>) -> Response {
    let limit = p.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and 100, not {limit}"),
        );
    }
    if let Some(after) = &p.starting_after {
        match sqlx::query("SELECT 1 FROM charges WHERE id = $1")
            .bind(after)
            .fetch_optional(&api.pool)
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("starting_after: no such charge: {after}"),
                );
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM charges
         WHERE ($1 IS NULL OR status = $1)
           AND ($2 IS NULL OR (created, id) < (SELECT created, id FROM charges WHERE id = $2))
         ORDER BY created DESC, id DESC LIMIT $3"
    ))
    .bind(&p.status)
    .bind(&p.starting_after)
    .bind(limit + 1)
    .fetch_all(&api.pool)
    .await;
    match rows {
        Ok(rows) => {
            let has_more = rows.len() as i64 > limit;
            let data: Vec<serde_json::Value> =
                rows.iter().take(limit as usize).map(charge).collect();
            Json(serde_json::json!({"object": "list", "data": data, "has_more": has_more}))
                .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/payments/{payment_id}/charge`: the captured charge of one payment, 404 if none.
async fn charge_of_payment(State(api): State<Api>, UrlPath(payment_id): UrlPath<i64>) -> Response {
    match sqlx::query(&format!(
        "SELECT {COLUMNS} FROM charges WHERE payment_id = $1 AND status = 'succeeded'"
    ))
    .bind(payment_id)
    .fetch_optional(&api.pool)
    .await
    {
        Ok(Some(row)) => Json(charge(&row)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no captured charge for payment {payment_id}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
