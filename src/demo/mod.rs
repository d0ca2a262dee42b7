//! `trueup demo`: a small shop and ledger in SQLite and a payment provider's HTTP API
//! (`provider.rs`, served by trueup itself) with planted problems of every kind, plus the
//! trueup.yaml and invariants that find them. Deterministic: the same data every time
//! (timestamps are relative to now).

mod provider;

pub use provider::{SOURCE as PROVIDER_SOURCE, Serving};

use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// The invariants the demo installs; also shipped as `invariants/demo.yaml`.
pub const INVARIANTS: &str = include_str!("../../invariants/demo.yaml");

/// The invariant on the payment provider's API, installed as `invariants/provider.yaml`; also
/// shipped as `invariants/demo-provider.yaml`.
pub const PROVIDER_INVARIANTS: &str = include_str!("../../invariants/demo-provider.yaml");

const MARKER: &str = ".trueup-demo";

/// The demo's trueup.yaml up to its `serve:` section; the provider's API listens on `port`.
fn config(port: u16) -> String {
    format!(
        "# Created by `trueup demo`. Paths are relative to this file.
store: sqlite://trueup.db
invariants: invariants
sources:
  shop:
    url: sqlite://shop.db
  ledger:
    url: sqlite://ledger.db
  # The payment provider's HTTP API. trueup serves this demo one itself while it runs on this
  # folder; a real one would be https://api.provider.example/ with a token from ${{ENV}}.
  {PROVIDER_SOURCE}:
    kind: http
    base_url: http://127.0.0.1:{port}/
    timeout: 10s
    allow_private_network: true
# What approved compensating actions may change: a writable connection to the ledger.
targets:
  ledger-writer:
    url: sqlite://ledger.db
"
    )
}

/// Where the demo's console listens.
pub const CONSOLE: &str = "127.0.0.1:8080";

/// The file in the demo folder that keeps the console's sign-in token (the config keeps only
/// its SHA-256, as a real one should).
pub const TOKEN_FILE: &str = "console-token.txt";

/// The `serve:` section of the demo's config: the console on [`CONSOLE`], one admin token
/// known by its SHA-256. (Last in the file.)
fn serve_section(token: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "# `trueup serve`: the console at http://{CONSOLE}/ui/; sign in with the token in {TOKEN_FILE}.
serve:
  listen: {CONSOLE}
  # Notices link to the console here.
  external_url: http://{CONSOLE}
  tokens:
    - name: demo
      role: admin
      sha256: {}
",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

/// The demo console's token, as `create` wrote it (`None`: not a demo folder, or made by an
/// older trueup).
pub fn console_token(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_owned())
}

/// What the demo plants, per invariant and kind: what `trueup check` must find.
pub const PLANTED: &[(&str, &str, u64)] = &[
    ("payments-ledger", "missing", 3),
    ("payments-ledger", "extra", 2),
    ("payments-ledger", "duplicate", 1),
    ("payments-ledger", "mismatch", 2),
    ("fulfilled-orders-paid", "check", 2),
    ("subscriptions-entitlements", "missing", 1),
    ("subscriptions-entitlements", "extra", 1),
    ("subscriptions-entitlements", "mismatch", 1),
    ("payment-lifecycle", "transition", 2),
    ("order-events-billed", "missing", OUTAGE_EVENTS),
    ("provider-charges-recorded", "missing", 1),
    ("provider-charges-recorded", "mismatch", 1),
];

/// Order events: one every six minutes over the two days before the current hour, eight
/// accounts taking turns.
const ORDER_EVENTS: i64 = 480;
/// Billing's consumer was down for three hours, from 18 h after the first event: the 30
/// events of that window never reached `billed_events`.
const OUTAGE_FIRST: i64 = 180;
pub const OUTAGE_EVENTS: u64 = 30;

/// When order event `i` happened.
fn order_event_at(i: i64, now: DateTime<Utc>) -> DateTime<Utc> {
    let hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .unwrap_or(now);
    hour - TimeDelta::hours(48) + TimeDelta::minutes(6 * i)
}

/// The outage: when billing's consumer stopped and started again.
pub fn outage_window(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        order_event_at(OUTAGE_FIRST, now),
        order_event_at(OUTAGE_FIRST + OUTAGE_EVENTS as i64, now),
    )
}

/// Payments captured moments ago, inside the 15-minute grace: not yet due.
pub const NOT_YET_DUE: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0} exists and is not a trueup demo folder; choose another with --dir")]
    NotADemo(PathBuf),
    #[error("cannot write the demo in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the demo databases: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "cannot serve the demo's payment provider API on {addr}: {why}; the invariant reading it fails until that port is free, or until `base_url` under `sources.provider` in trueup.yaml names a free one"
    )]
    ProviderPort { addr: String, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates (or re-creates) the demo in `dir`; returns the path of its trueup.yaml.
pub async fn create(dir: &Path) -> Result<PathBuf, DemoError> {
    if dir.exists() {
        let is_empty = std::fs::read_dir(dir).map_err(io(dir))?.next().is_none();
        if !is_empty && !dir.join(MARKER).exists() {
            return Err(DemoError::NotADemo(dir.to_owned()));
        }
        for name in [
            TOKEN_FILE,
            "provider.db",
            "shop.db",
            "ledger.db",
            "trueup.db",
            "trueup.db-wal",
            "trueup.db-shm",
            "shop.db-wal",
            "shop.db-shm",
            "ledger.db-wal",
            "ledger.db-shm",
        ] {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
    }
    std::fs::create_dir_all(dir.join("invariants")).map_err(io(dir))?;
    std::fs::write(dir.join(MARKER), "created by `trueup demo`\n").map_err(io(dir))?;
    // A fresh token for each demo: it signs in to a console that can approve and apply.
    let token = format!("demo-{}", hex::encode(rand::random::<[u8; 16]>()));
    std::fs::write(dir.join(TOKEN_FILE), format!("{token}\n")).map_err(io(dir))?;
    let port = provider::free_port().map_err(io(dir))?;
    std::fs::write(
        dir.join("trueup.yaml"),
        format!("{}{}", config(port), serve_section(&token)),
    )
    .map_err(io(dir))?;
    std::fs::write(dir.join("invariants/demo.yaml"), INVARIANTS).map_err(io(dir))?;
    std::fs::write(dir.join("invariants/provider.yaml"), PROVIDER_INVARIANTS).map_err(io(dir))?;

    let now = Utc::now().with_nanosecond(0).unwrap_or_else(Utc::now);
    seed_shop(&dir.join("shop.db"), now).await?;
    seed_ledger(&dir.join("ledger.db"), now).await?;
    provider::seed(&dir.join("provider.db"), now).await?;
    Ok(dir.join("trueup.yaml"))
}

/// When `config` is a demo's, serves its payment provider's API for the life of this
/// process (unless another trueup process on the demo does); `None` for any other config.
pub async fn serve_provider(config: &crate::config::Config) -> Option<Result<Serving, DemoError>> {
    let dir = match config.file.as_ref()?.parent()? {
        p if p.as_os_str().is_empty() => Path::new("."),
        p => p,
    };
    if !dir.join(MARKER).exists() {
        return None;
    }
    let name = crate::domain::SourceName::parse(PROVIDER_SOURCE).ok()?;
    let Some(crate::config::SourceConfig::Http(api)) = config.sources.get(&name) else {
        return None;
    };
    let url = reqwest::Url::parse(&api.base_url).ok()?;
    let addr = format!("{}:{}", url.host_str()?, url.port_or_known_default()?);
    Some(provider::serve(dir, &addr).await)
}

/// Repairs part of what the demo planted, the way an operator would: books the ledger entry
/// payment 17 was missing and removes the stray entry for payment 901. The next check
/// resolves exactly those two.
pub async fn repair(dir: &Path) -> Result<(), DemoError> {
    if !dir.join(MARKER).exists() {
        return Err(DemoError::NotADemo(dir.to_owned()));
    }
    let mut ledger = open(&dir.join("ledger.db"), false).await?;
    let mut tx = ledger.begin().await?;
    sqlx::query(
        "INSERT INTO ledger_entries (payment_id, amount_cents, currency, booked_at) VALUES (17, $1, $2, $3)",
    )
    .bind(amount(17))
    .bind(currency(17))
    .bind(ts(Utc::now()))
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM ledger_entries WHERE payment_id = 901")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    ledger.close().await?;
    Ok(())
}

async fn open(path: &Path, create: bool) -> Result<SqliteConnection, sqlx::Error> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(create);
    SqliteConnection::connect_with(&opts).await
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn amount(id: i64) -> i64 {
    1000 + (id * 37) % 5000
}

fn currency(id: i64) -> &'static str {
    if id % 5 == 0 { "EUR" } else { "USD" }
}

fn captured_at(id: i64, now: DateTime<Utc>) -> DateTime<Utc> {
    now - TimeDelta::hours(201 - id)
}

async fn seed_shop(path: &Path, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let mut db = open(path, true).await?;
    let mut tx = db.begin().await?;
    for ddl in [
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, total_cents INTEGER NOT NULL, created_at DATETIME NOT NULL)",
        "CREATE TABLE payments (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL, captured_at DATETIME)",
        "CREATE TABLE payment_events (payment_id INTEGER NOT NULL, state TEXT NOT NULL, at DATETIME NOT NULL)",
        "CREATE TABLE subscriptions (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, plan TEXT NOT NULL, status TEXT NOT NULL)",
        "CREATE TABLE order_events (id INTEGER PRIMARY KEY, account TEXT NOT NULL, amount_cents INTEGER NOT NULL, created_at DATETIME NOT NULL)",
    ] {
        sqlx::query(ddl).execute(&mut *tx).await?;
    }
    let event = |id: i64, state: &'static str, at: DateTime<Utc>| (id, state, at);
    let mut events = Vec::new();
    // Payments 1-200 were captured hours ago; 201 a moment ago (inside the grace period);
    // 202-210 never got past pending.
    for id in 1..=210_i64 {
        let (status, at) = match id {
            1..=200 => ("captured", Some(captured_at(id, now))),
            201 => ("captured", Some(now - TimeDelta::minutes(2))),
            _ => ("failed", None),
        };
        sqlx::query("INSERT INTO payments VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(id)
            .bind(id)
            .bind(amount(id))
            .bind(currency(id))
            .bind(status)
            .bind(at.map(ts))
            .execute(&mut *tx)
            .await?;
        let order_status = if id <= 200 { "fulfilled" } else { "pending" };
        sqlx::query("INSERT INTO orders VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(order_status)
            .bind(amount(id))
            .bind(ts(captured_at(id.min(200), now) - TimeDelta::minutes(5)))
            .execute(&mut *tx)
            .await?;
        let t = at.unwrap_or(now - TimeDelta::hours(1));
        events.push(event(id, "pending", t - TimeDelta::minutes(3)));
        match (id, status) {
            // Planted: captured without being authorized.
            (5, _) => events.push(event(id, "captured", t)),
            (_, "captured") => {
                events.push(event(id, "authorized", t - TimeDelta::minutes(2)));
                events.push(event(id, "captured", t));
                // Planted: a captured payment moved back to authorized.
                if id == 9 {
                    events.push(event(id, "authorized", t + TimeDelta::minutes(1)));
                }
            }
            _ => events.push(event(id, "failed", t)),
        }
    }
    // Planted: two fulfilled orders without any payment.
    for id in [211_i64, 212] {
        sqlx::query("INSERT INTO orders VALUES ($1, 'fulfilled', $2, $3)")
            .bind(id)
            .bind(amount(id))
            .bind(ts(now - TimeDelta::hours(3)))
            .execute(&mut *tx)
            .await?;
    }
    for (id, state, at) in events {
        sqlx::query("INSERT INTO payment_events VALUES ($1, $2, $3)")
            .bind(id)
            .bind(state)
            .bind(ts(at))
            .execute(&mut *tx)
            .await?;
    }
    for id in 1..=50_i64 {
        sqlx::query("INSERT INTO subscriptions VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(format!("customer-{id:03}"))
            .bind(if id % 2 == 0 { "pro" } else { "basic" })
            .bind(if id <= 45 { "active" } else { "canceled" })
            .execute(&mut *tx)
            .await?;
    }
    for i in 0..ORDER_EVENTS {
        sqlx::query("INSERT INTO order_events VALUES ($1, $2, $3, $4)")
            .bind(i + 1)
            .bind(format!("acct-{}", i % 8))
            .bind(amount(i))
            .bind(ts(order_event_at(i, now)))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    db.close().await
}

async fn seed_ledger(path: &Path, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let mut db = open(path, true).await?;
    let mut tx = db.begin().await?;
    for ddl in [
        "CREATE TABLE ledger_entries (id INTEGER PRIMARY KEY AUTOINCREMENT, payment_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL, currency TEXT NOT NULL, booked_at DATETIME NOT NULL)",
        "CREATE TABLE entitlements (subscription_id INTEGER NOT NULL, plan TEXT NOT NULL, active INTEGER NOT NULL)",
        "CREATE TABLE billed_events (event_id INTEGER PRIMARY KEY, account TEXT NOT NULL, amount_cents INTEGER NOT NULL, billed_at DATETIME NOT NULL)",
    ] {
        sqlx::query(ddl).execute(&mut *tx).await?;
    }
    let mut entries: Vec<(i64, i64, &str, DateTime<Utc>)> = Vec::new();
    for id in 1..=200_i64 {
        // Planted: three captured payments never reached the ledger.
        if [17, 58, 133].contains(&id) {
            continue;
        }
        let booked = captured_at(id, now) + TimeDelta::seconds(30);
        // Planted: a wrong amount, and a wrong currency.
        let amount_cents = if id == 42 { amount(id) + 9 } else { amount(id) };
        let cur = if id == 150 { "USD" } else { currency(id) };
        entries.push((id, amount_cents, cur, booked));
        // Planted: a payment booked twice.
        if id == 77 {
            entries.push((id, amount(id), currency(id), booked + TimeDelta::minutes(1)));
        }
    }
    // Planted: two entries for payments the shop never took.
    for id in [901_i64, 902] {
        entries.push((id, 4200, "USD", now - TimeDelta::hours(5)));
    }
    for (payment, amount_cents, cur, booked) in entries {
        sqlx::query(
            "INSERT INTO ledger_entries (payment_id, amount_cents, currency, booked_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(payment)
        .bind(amount_cents)
        .bind(cur)
        .bind(ts(booked))
        .execute(&mut *tx)
        .await?;
    }
    for id in 1..=50_i64 {
        let plan = if id % 2 == 0 { "pro" } else { "basic" };
        let row = match id {
            // Planted: an active subscription without its entitlement.
            12 => None,
            // Planted: the entitlement is for another plan.
            30 => Some(("basic", 1)),
            // Planted: a canceled subscription still entitled.
            48 => Some((plan, 1)),
            1..=45 => Some((plan, 1)),
            _ => Some((plan, 0)),
        };
        if let Some((plan, active)) = row {
            sqlx::query("INSERT INTO entitlements VALUES ($1, $2, $3)")
                .bind(id)
                .bind(plan)
                .bind(active)
                .execute(&mut *tx)
                .await?;
        }
    }
    // Planted: the outage; billing processed every event but those of its three hours.
    for i in (0..ORDER_EVENTS)
        .filter(|i| !(OUTAGE_FIRST..OUTAGE_FIRST + OUTAGE_EVENTS as i64).contains(i))
    {
        sqlx::query("INSERT INTO billed_events VALUES ($1, $2, $3, $4)")
            .bind(i + 1)
            .bind(format!("acct-{}", i % 8))
            .bind(amount(i))
            .bind(ts(order_event_at(i, now) + TimeDelta::seconds(20)))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    db.close().await
}
