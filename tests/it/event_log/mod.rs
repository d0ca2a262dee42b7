//! trueup's own event logs: capture from a signed webhook, JetStream and Redis Streams.

mod capture;
mod redis_feed;
mod replay;
mod retention;
mod source;
mod webhook;

use std::path::Path;

/// The secret the tests' webhooks are signed with.
pub const SECRET: &str = "whsec_test_0123456789abcdef";

/// Writes `trueup.yaml` (a SQLite store in `dir`, no invariants, the test tokens, `body`
/// appended) and parses it with `ORDERS_SECRET` set to [`SECRET`].
pub fn config(dir: &Path, body: &str) -> trueup::config::Config {
    let store = format!("sqlite://{}", dir.join("trueup.db").display());
    config_with_store(dir, &store, body)
}

/// [`config`] with the store at `store`.
pub fn config_with_store(dir: &Path, store: &str, body: &str) -> trueup::config::Config {
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    let text = format!(
        "store: {store}\ninvariants: invariants\n{}{body}",
        crate::serve::tokens_yaml("")
    );
    let path = dir.join("trueup.yaml");
    std::fs::write(&path, &text).unwrap();
    trueup::config::Config::parse(&text, &path, &|name| {
        (name == "ORDERS_SECRET").then(|| SECRET.to_owned())
    })
    .unwrap()
}

/// A webhook request's signature header for `body`, made `age_secs` ago.
pub fn signed(body: &[u8], age_secs: i64) -> String {
    trueup::capture::sign(
        SECRET.as_bytes(),
        chrono::Utc::now().timestamp() - age_secs,
        body,
    )
}

/// Sends `event` as a signed webhook to the log `orders` of the server at `base`; it must be
/// stored (201).
pub async fn deliver(base: &str, event: &serde_json::Value) {
    let body = serde_json::to_vec(event).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/ingest/orders"))
        .header("Trueup-Signature", signed(&body, 0))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{event}");
}

/// The value of one sample of `/metrics`, 0 when absent.
pub fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}
