//! The event log's promise under a crash: 100,000 events on JetStream and 10,000 signed
//! webhooks, some of each delivered twice, captured by a `trueup serve` that is killed with
//! SIGKILL in the middle and started again. Each event id is kept once, with its deliveries
//! counted; nothing is lost.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use super::{SECRET, config, signed};
use crate::helpers::{NATS_URL, TestStream};

const STREAM_EVENTS: usize = 100_000;
const WEBHOOKS: usize = 10_000;

/// `trueup serve` as its own process, killed when dropped.
struct Serve {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(dir: &Path, log: &str) -> Self {
        let log = dir.join(log);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_trueup"))
            .args([
                "--config",
                "trueup.yaml",
                "--log",
                "info",
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .current_dir(dir)
            .env("ORDERS_SECRET", SECRET)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// `http://<addr>` once it serves, from its log.
    async fn base(&mut self) -> String {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(rest) = text.split("trueup serving on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "serve ended:\n{text}"
            );
            assert!(Instant::now() < until, "serve did not start:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events of the log stored from the stream so far.
async fn stream_events(db: &Path) -> i64 {
    let Ok(mut conn) = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}?mode=ro",
        db.display()
    ))
    .await
    else {
        return 0;
    };
    sqlx::query_scalar("SELECT COUNT(*) FROM log_events WHERE source LIKE 'nats:%'")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0)
}

/// How often each webhook id was answered 2xx, and how often a request for it got no answer
/// (sent while serve was killed: it may or may not have been stored).
#[derive(Default)]
struct Sent {
    answered: HashMap<String, u64>,
    unanswered: HashMap<String, u64>,
}

/// Posts each body until it is answered, against whatever address `base` holds now.
async fn post_all(
    bodies: Vec<(String, Vec<u8>)>,
    base: Arc<Mutex<String>>,
    sent: Arc<Mutex<Sent>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    futures_util::stream::iter(bodies)
        .for_each_concurrent(8, |(id, body)| {
            let (client, base, sent) = (client.clone(), base.clone(), sent.clone());
            async move {
                let started = Instant::now();
                loop {
                    assert!(
                        started.elapsed() < Duration::from_secs(120),
                        "{id} never answered"
                    );
                    let url = format!("{}/ingest/orders", base.lock().unwrap());
                    let answer = client
                        .post(url)
                        .header("Trueup-Signature", signed(&body, 0))
                        .body(body.clone())
                        .send()
                        .await;
                    match answer {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            assert!(status == 200 || status == 201, "{id}: {status}");
                            *sent.lock().unwrap().answered.entry(id).or_default() += 1;
                            return;
                        }
                        Err(_) => {
                            *sent
                                .lock()
                                .unwrap()
                                .unanswered
                                .entry(id.clone())
                                .or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_and_webhooks_delivered_twice_are_kept_once_with_their_count_through_a_kill_9_of_serve()
 {
    let dir = tempfile::tempdir().unwrap();
    let stream = TestStream::new().await;
    // 1 id in 100 is published twice: most twice in a row (often in one batch), ten of them
    // again at the end.
    let twice = |i: usize| i % 100 == 7;
    let mut messages = Vec::with_capacity(STREAM_EVENTS + STREAM_EVENTS / 100);
    for i in 0..STREAM_EVENTS {
        let event =
            json!({"id": format!("n-{i}"), "at": "2026-12-05T10:00:00Z", "account": i % 24});
        if twice(i) && i > 1_000 {
            messages.push(("orders.created".to_owned(), vec![], event.clone()));
        }
        messages.push(("orders.created".to_owned(), vec![], event));
    }
    for i in 0..1_000 {
        if twice(i) {
            let event =
                json!({"id": format!("n-{i}"), "at": "2026-12-05T10:00:00Z", "account": i % 24});
            messages.push(("orders.created".to_owned(), vec![], event));
        }
    }
    assert_eq!(messages.len(), 101_000);
    stream.publish_all(&messages).await;

    config(
        dir.path(),
        &format!(
            "sources:\n  bus:\n    url: {NATS_URL}\nevent_logs:\n  orders:\n    event_id: id\n    event_time: at\n    from:\n      - nats: {{source: bus, stream: {}, subject: \"{}.>\", ack_wait: 3s}}\n      - webhook: {{secret: \"${{ORDERS_SECRET}}\"}}\n",
            stream.name, stream.prefix
        ),
    );
    let db = dir.path().join("trueup.db");
    let mut serve = Serve::start(dir.path(), "serve-1.log");
    let base = Arc::new(Mutex::new(serve.base().await));

    // 1 webhook in 20 is sent twice (a provider's retry).
    let mut bodies = Vec::new();
    for i in 0..WEBHOOKS {
        let id = format!("w-{i}");
        let body = serde_json::to_vec(&json!({"id": id, "at": "2026-12-05T11:00:00Z"})).unwrap();
        if i % 20 == 3 {
            bodies.push((id.clone(), body.clone()));
        }
        bodies.push((id, body));
    }
    let sent = Arc::new(Mutex::new(Sent::default()));
    let posting = tokio::spawn(post_all(bodies, base.clone(), sent.clone()));

    // Killed while the stream is being captured (and webhooks arrive).
    let started = Instant::now();
    while stream_events(&db).await < 30_000 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "capture made no progress:\n{}",
            std::fs::read_to_string(&serve.log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    serve.kill();
    let at_kill = stream_events(&db).await;
    assert!(
        at_kill < STREAM_EVENTS as i64,
        "the kill came after the capture had ended ({at_kill})"
    );
    let mut serve = Serve::start(dir.path(), "serve-2.log");
    *base.lock().unwrap() = serve.base().await;
    posting.await.unwrap();

    // Everything is captured: every message of the stream acknowledged, none pending.
    let js = async_nats::jetstream::new(async_nats::connect(NATS_URL).await.unwrap());
    let nats_stream = js.get_stream(&stream.name).await.unwrap();
    let started = Instant::now();
    loop {
        let info = nats_stream.consumer_info("trueup-orders").await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "capture did not finish: {} pending, {} unacknowledged\n{}",
            info.num_pending,
            info.num_ack_pending,
            std::fs::read_to_string(&serve.log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let store = trueup::store::open(&trueup::config::SecretUrl::new(format!(
        "sqlite://{}",
        db.display()
    )))
    .await
    .unwrap();
    let mut deliveries: HashMap<String, i64> = HashMap::new();
    let mut after = None;
    loop {
        let page = store.logged_events("orders", after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for e in page {
            assert!(
                deliveries
                    .insert(e.event_id.clone(), e.deliveries)
                    .is_none(),
                "{} twice",
                e.event_id
            );
        }
    }
    // Each id once: nothing lost, nothing stored twice.
    assert_eq!(deliveries.len(), STREAM_EVENTS + WEBHOOKS);
    for i in 0..STREAM_EVENTS {
        let want = if twice(i) { 2 } else { 1 };
        assert_eq!(deliveries[&format!("n-{i}")], want, "n-{i}");
    }
    // A webhook whose request got no answer (sent into the kill) may have been stored; its
    // retry is then a delivery of its own.
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    for i in 0..WEBHOOKS {
        let id = format!("w-{i}");
        let answered = sent.answered[&id] as i64;
        let unanswered = sent.unanswered.get(&id).copied().unwrap_or(0) as i64;
        assert_eq!(answered, if i % 20 == 3 { 2 } else { 1 }, "{id}");
        let got = deliveries[&id];
        assert!(
            answered <= got && got <= answered + unanswered,
            "{id}: {got} deliveries, {answered} answered, {unanswered} unanswered"
        );
    }
    // A message's subject is kept as the header Nats-Subject (what a log side reads).
    let first = store.logged_event("orders", "n-0").await.unwrap().unwrap();
    assert_eq!(
        first.headers["Nats-Subject"],
        format!("{}.orders.created", stream.prefix)
    );
    assert!(first.source.starts_with("nats:bus/"), "{}", first.source);
    let counts = store.log_counts("orders").await.unwrap();
    let unanswered: u64 = sent.unanswered.values().sum();
    assert!(
        (counts.duplicates as i64 - 1_000 - 500).unsigned_abs() <= unanswered,
        "{counts:?}, {unanswered} unanswered"
    );
    eprintln!(
        "killed with {at_kill} of {STREAM_EVENTS} stream events stored; {unanswered} webhook requests unanswered; {counts:?}"
    );
    store.close().await;
    drop(serve);
}

#[tokio::test]
async fn a_feed_whose_server_never_answers_reads_as_down_while_it_tries_again() {
    // A server that takes the connection and never says a word: the client waits for its
    // greeting until the source's timeout, fails, and the feed starts again.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::TestServer::start(config(
        dir.path(),
        &format!(
            "sources:\n  bus:\n    url: nats://{addr}\n    timeout: 2s\nevent_logs:\n  orders:\n    event_id: id\n    from:\n      - nats: {{source: bus, stream: ORDERS}}\n"
        ),
    ))
    .await;
    let mut readings = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let (_, metrics) = crate::serve::get(&format!("{}/metrics", server.base)).await;
        readings.extend(
            metrics
                .lines()
                .filter(|l| l.starts_with("trueup_log_feed_up{") && l.contains(r#"log="orders""#))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Through two connection attempts and the wait between them, never up.
    assert!(!readings.is_empty(), "no trueup_log_feed_up for the feed");
    assert!(readings.iter().all(|v| *v == 0.0), "{readings:?}");
    server.shut_down().await.unwrap();
}
