//! Alert notifications end to end: a real webhook listener and a real SMTP server (aiosmtpd,
//! which .ci/run installs from PyPI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use trueup::config::Config;
use trueup::domain::RunStatus;

use crate::helpers::wait_for;

/// The demo with every invariant every second and `channels` appended to its config.
async fn demo(dir: &Path, channels_yaml: &str) -> Config {
    crate::helpers::demo_with(dir, Some("* * * * * *"), channels_yaml).await
}

pub(crate) type Received = Arc<Mutex<Vec<(Option<String>, serde_json::Value)>>>;

pub(crate) async fn webhook_listener() -> (String, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                |State(r): State<Received>,
                 headers: HeaderMap,
                 body: axum::Json<serde_json::Value>| async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    r.lock().unwrap().push((key, body.0));
                    "ok"
                },
            ),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test]
async fn a_webhook_hears_each_firing_once_and_a_source_outage_never_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = webhook_listener().await;
    let config = demo(
        dir.path(),
        &format!("notifications:\n  channels:\n    ops:\n      webhook: {{url: \"{url}\"}}\n"),
    )
    .await;
    let server = crate::helpers::TestServer::start(config).await;
    let store = std::sync::Arc::clone(&server.store);

    // All five demo invariants are violated: each fires once.
    wait_for("five firing notices", Duration::from_secs(15), || async {
        received.lock().unwrap().len() >= 5
    })
    .await;
    // Several more runs with the same evidence: no more notices.
    let runs_before = store
        .runs(Some("payments-ledger"), 100)
        .await
        .unwrap()
        .len();
    wait_for("two more runs", Duration::from_secs(10), || async {
        store
            .runs(Some("payments-ledger"), 100)
            .await
            .unwrap()
            .len()
            >= runs_before + 2
    })
    .await;
    // The outbox holds every notice ever queued: still the five.
    assert_eq!(store.outbox(20).await.unwrap().len(), 5);
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 5, "{got:#?}");
        let mut invariants: Vec<&str> = got
            .iter()
            .map(|(_, p)| p["invariant"].as_str().unwrap())
            .collect();
        invariants.sort();
        assert_eq!(
            invariants,
            [
                "fulfilled-orders-paid",
                "order-events-billed",
                "payment-lifecycle",
                "payments-ledger",
                "subscriptions-entitlements"
            ]
        );
        for (key, payload) in got.iter() {
            assert_eq!(payload["notice"], "firing");
            assert_eq!(payload["version"], 1);
            assert_eq!(
                key.as_deref(),
                payload["dedup_key"].as_str(),
                "Idempotency-Key is the dedup key"
            );
        }
        let ledger = got
            .iter()
            .find(|(_, p)| p["invariant"] == "payments-ledger")
            .unwrap();
        assert_eq!(ledger.1["open_violations"], 8);
        assert_eq!(ledger.1["counts"]["missing"], 3);
    }

    // The ledger's table goes away (as in a botched migration): evaluations fail, and nothing
    // resolves.
    {
        use sqlx::Connection;
        let mut ledger = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}",
            dir.path().join("ledger.db").display()
        ))
        .await
        .unwrap();
        sqlx::query("ALTER TABLE ledger_entries RENAME TO ledger_entries_away")
            .execute(&mut ledger)
            .await
            .unwrap();
        ledger.close().await.unwrap();
    }
    wait_for(
        "the outage to show as failed runs",
        Duration::from_secs(10),
        || async {
            store
                .runs(Some("payments-ledger"), 5)
                .await
                .unwrap()
                .iter()
                .filter(|r| r.status == RunStatus::Failed)
                .count()
                >= 2
        },
    )
    .await;
    // Notices are queued with the alert change they announce: none resolved was.
    let queued = store.outbox(20).await.unwrap();
    assert!(
        queued
            .iter()
            .all(|i| i.message.payload["notice"] != "resolved"),
        "{queued:#?}"
    );
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .all(|(_, p)| p["notice"] != "resolved"),
        "a source outage must not resolve anything"
    );
    assert_eq!(
        store.alert("payments-ledger").await.unwrap().state,
        trueup::domain::AlertState::Firing
    );
    server.stop().await;
}

/// An aiosmtpd process writing every message it accepts into a maildir.
pub(crate) struct SmtpServer {
    child: Child,
    maildir: PathBuf,
}

impl SmtpServer {
    pub(crate) fn start(port: u16, maildir: &Path) -> Self {
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir)
            .spawn()
            .expect("python3 with aiosmtpd (.ci/run installs it: python3 -m pip install aiosmtpd)");
        Self {
            child,
            maildir: maildir.to_owned(),
        }
    }

    pub(crate) fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn email_sent_while_the_smtp_server_is_down_arrives_once_it_is_back() {
    let check = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .expect("python3");
    assert!(
        check.success(),
        "aiosmtpd is missing: .ci/run installs it with `python3 -m pip install aiosmtpd`"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = demo(
        dir.path(),
        &format!(
            "notifications:\n  channels:\n    oncall:\n      email: {{smtp: \"smtp://127.0.0.1:{port}\", from: trueup@example.com, to: [oncall@example.com]}}\n"
        ),
    )
    .await;
    let server = crate::helpers::TestServer::start(config).await;
    let store = std::sync::Arc::clone(&server.store);

    // The SMTP server is down for 30 s: the five firing notices wait in the outbox, retried.
    // Retried with backoff (1, 2, 4 s ...): four attempts each take about 15 s.
    wait_for(
        "four failed attempts of each notice",
        Duration::from_secs(60),
        || async {
            let items = store.outbox(10).await.unwrap();
            items.len() == 5
                && items
                    .iter()
                    .all(|i| i.attempts >= 4 && i.delivered_at.is_none())
        },
    )
    .await;
    let maildir = dir.path().join("maildir");
    let smtp = SmtpServer::start(port, &maildir);
    // Retries have backed off to at most 32 s by now.
    wait_for(
        "five emails, delivered",
        Duration::from_secs(60),
        || async {
            let items = store.outbox(10).await.unwrap();
            items.len() == 5 && items.iter().all(|i| i.delivered_at.is_some())
        },
    )
    .await;
    // Stopped, the outbox worker has ended: no copy can still be on its way.
    server.stop().await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 5, "exactly one email per firing alert");
    let ledger = read_email(
        mails
            .iter()
            .find(|m| m.contains("payments-ledger"))
            .unwrap(),
    );
    assert_eq!(
        ledger["subject"], "[trueup] FIRING critical payments-ledger: 8 open violation(s)",
        "{ledger:#}"
    );
    let text = ledger["text/plain"].as_str().unwrap();
    assert!(
        text.contains("by kind: duplicate 1, extra 2, mismatch 2, missing 3"),
        "{text}"
    );
    // No console address is configured: the notice says where to set one.
    assert!(
        text.contains("set serve.external_url in trueup.yaml for links to the console"),
        "{text}"
    );
}

/// `trueup serve` on `dir`'s config as a process of its own, logging to `serve-N.log`.
fn serve_process(dir: &Path, n: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trueup"))
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
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("serve-{n}.log"))).unwrap())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn notices_queued_before_a_crash_are_delivered_after_the_restart_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the webhook's port yet: deliveries fail and stay queued.
    let port = free_port();
    demo(dir.path(), &format!("notifications:\n  channels:\n    ops:\n      webhook: {{url: \"http://127.0.0.1:{port}/hook\"}}\n")).await;
    let spawn = |n: u32| serve_process(dir.path(), n);
    // Migrate before the process starts, so the two never race on a fresh file.
    let store = trueup::store::open(&Config::load(&dir.path().join("trueup.yaml")).unwrap().store)
        .await
        .unwrap();
    let mut first = spawn(1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.outbox(10).await.unwrap().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the firing notices were never queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let each notice fail at least once (so none is mid-attempt), then the process dies
    // before it could deliver anything.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store
        .outbox(10)
        .await
        .unwrap()
        .iter()
        .all(|i| i.attempts >= 1)
    {
        assert!(Instant::now() < deadline, "no delivery was attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        store
            .outbox(10)
            .await
            .unwrap()
            .iter()
            .all(|i| i.delivered_at.is_none())
    );

    // The receiver comes up, trueup restarts: each queued notice arrives once, and the alerts,
    // still firing in the store, fire nothing new.
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                |State(r): State<Received>, body: axum::Json<serde_json::Value>| async move {
                    r.lock().unwrap().push((None, body.0));
                    "ok"
                },
            ),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut second = spawn(2);
    // A notice the dead process had claimed waits for its claim's lease (60 s) to end.
    let deadline = Instant::now() + Duration::from_secs(75);
    while received.lock().unwrap().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the queued notices did not arrive: {:#?}\n{}",
            store.outbox(10).await.unwrap(),
            std::fs::read_to_string(dir.path().join("serve-2.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Recorded delivered: no attempt is left that could send another copy.
    wait_for(
        "the notices, delivered",
        Duration::from_secs(15),
        || async {
            store
                .outbox(10)
                .await
                .unwrap()
                .iter()
                .all(|i| i.delivered_at.is_some())
        },
    )
    .await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "{got:#?}");
    let mut keys: Vec<&str> = got
        .iter()
        .map(|(_, p)| p["dedup_key"].as_str().unwrap())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 5);
    second.kill().unwrap();
    second.wait().unwrap();
    store.close().await;
}

/// An email as a mail client reads it (Python's email package): its subject and the text of
/// each part by content type, transfer encodings undone.
pub(crate) fn read_email(raw: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import email, json, sys\n\
             from email import policy\n\
             m = email.message_from_string(sys.stdin.read(), policy=policy.default)\n\
             out = {'subject': str(m['subject'])}\n\
             for part in m.walk():\n\
             \x20   if part.get_content_maintype() == 'text':\n\
             \x20       out[part.get_content_type()] = part.get_content()\n\
             print(json.dumps(out))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(raw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "cannot read the email:\n{raw}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_firing_email_links_the_invariant_its_replay_and_runbook_and_reads_its_samples_in_both_parts()
 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let maildir = dir.path().join("maildir");
    let smtp = SmtpServer::start(port, &maildir);
    let config = demo(
        dir.path(),
        &format!(
            "serve:\n  external_url: https://trueup.example.test/ops/\nnotifications:\n  channels:\n    oncall:\n      email: {{smtp: \"smtp://127.0.0.1:{port}\", from: trueup@example.com, to: [oncall@example.com]}}\n"
        ),
    )
    .await;
    // The invariant that lost three hours of order events gets a runbook.
    let rules = dir.path().join("invariants/demo.yaml");
    let text = std::fs::read_to_string(&rules).unwrap().replace(
        "  - name: order-events-billed\n",
        "  - name: order-events-billed\n    runbook_url: https://wiki.example.test/runbooks/order-events\n",
    );
    std::fs::write(&rules, text).unwrap();
    let config_store = config.store.clone();
    let server = crate::helpers::TestServer::start(config).await;
    let store = std::sync::Arc::clone(&server.store);
    wait_for("the order events' email", Duration::from_secs(30), || {
        let smtp = &smtp;
        async move {
            smtp.messages()
                .iter()
                .any(|m| m.contains("order-events-billed"))
        }
    })
    .await;
    let outbox = store.outbox(20).await.unwrap();
    server.stop().await;

    let raw = smtp
        .messages()
        .into_iter()
        .find(|m| m.contains("order-events-billed"))
        .unwrap();
    let mail = read_email(&raw);
    let payload = &outbox
        .iter()
        .find(|m| m.message.payload["invariant"] == "order-events-billed")
        .unwrap()
        .message
        .payload;
    assert_eq!(
        mail["subject"],
        format!(
            "[trueup] FIRING high order-events-billed: {} open violation(s)",
            payload["open_violations"]
        ),
        "{mail:#}"
    );
    let plain = mail["text/plain"].as_str().expect("a plain-text part");
    // The template escapes `/` in attributes as `&#x2f;`: the same address to a browser.
    let html = mail["text/html"]
        .as_str()
        .expect("an HTML part")
        .replace("&#x2f;", "/");

    // The links span the event times of the open violations, to the second, end exclusive.
    let store = trueup::store::open(&config_store).await.unwrap();
    let times = store
        .event_times(&trueup::store::ViolationFilter {
            invariants: vec!["order-events-billed".into()],
            status: trueup::store::StatusFilter::Active,
            ..Default::default()
        })
        .await
        .unwrap();
    let stamp = |t: chrono::DateTime<chrono::Utc>| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .replace(':', "%3A")
    };
    let from = stamp(*times.iter().min().unwrap());
    let to = stamp(*times.iter().max().unwrap() + chrono::TimeDelta::seconds(1));
    let page = "https://trueup.example.test/ops/ui/invariants/order-events-billed";
    let timeline = format!("{page}?from={from}&to={to}");
    let replay = format!(
        "https://trueup.example.test/ops/ui/replay?invariant=order-events-billed&from={from}&to={to}"
    );
    let runbook = "https://wiki.example.test/runbooks/order-events";
    for line in [
        format!("console:   {page}"),
        format!("timeline:  {timeline}"),
        format!("replay:    {replay} (a dry run: it delivers nothing)"),
        format!("runbook:   {runbook}"),
        "labels:    service=orders team=billing".to_owned(),
    ] {
        assert!(plain.contains(&line), "{line}\n---\n{plain}");
    }
    for href in [page.to_owned(), timeline, replay, runbook.to_owned()] {
        let escaped = href.replace('&', "&amp;");
        assert!(
            html.contains(&format!("href=\"{escaped}\"")),
            "{escaped}\n---\n{html}"
        );
    }
    // Each sample as `trueup check` prints it, in both parts: no raw JSON.
    let samples = payload["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 5, "{payload:#}");
    for s in samples {
        let key = s["key"][0].as_i64().unwrap();
        // The upstream row's columns as `name=value`, text unquoted.
        let left: Vec<String> = s["evidence"]["left"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(text) => format!("{k}={text}"),
                None => format!("{k}={v}"),
            })
            .collect();
        let line = format!("missing {key} — no right row; left: {}", left.join(" "));
        assert!(
            plain.contains(&format!("  {line}\n")),
            "{line}\n---\n{plain}"
        );
        assert!(
            html.contains(&format!("<li>{line}</li>")),
            "{line}\n---\n{html}"
        );
    }
    assert!(
        !plain.contains("{\"") && !html.contains("{&quot;"),
        "{plain}"
    );
}

/// Block Kit as Slack documents it, with its limits (the blocks trueup sends).
const SLACK_BLOCK_KIT: &str = r##"{
  "type": "object", "required": ["text", "blocks"], "additionalProperties": false,
  "properties": {
    "text": {"type": "string", "minLength": 1, "maxLength": 40000},
    "blocks": {"type": "array", "minItems": 1, "maxItems": 50, "items": {"oneOf": [
      {"type": "object", "required": ["type", "text"], "additionalProperties": false,
       "properties": {"type": {"const": "header"}, "text": {"$ref": "#/$defs/plain150"}}},
      {"type": "object", "required": ["type"], "additionalProperties": false,
       "anyOf": [{"required": ["text"]}, {"required": ["fields"]}],
       "properties": {"type": {"const": "section"}, "text": {"$ref": "#/$defs/text3000"},
         "fields": {"type": "array", "minItems": 1, "maxItems": 10,
           "items": {"$ref": "#/$defs/text2000"}},
         "accessory": {"$ref": "#/$defs/button"}}},
      {"type": "object", "required": ["type", "elements"], "additionalProperties": false,
       "properties": {"type": {"const": "actions"}, "elements": {"type": "array", "minItems": 1,
         "maxItems": 25, "items": {"$ref": "#/$defs/button"}}}},
      {"type": "object", "required": ["type", "elements"], "additionalProperties": false,
       "properties": {"type": {"const": "context"}, "elements": {"type": "array", "minItems": 1,
         "maxItems": 10, "items": {"$ref": "#/$defs/text2000"}}}}
    ]}}
  },
  "$defs": {
    "button": {"type": "object", "required": ["type", "text", "url"],
      "additionalProperties": false, "properties": {"type": {"const": "button"},
        "text": {"$ref": "#/$defs/plain75"},
        "url": {"type": "string", "pattern": "^https?://", "maxLength": 3000}}},
    "plain150": {"type": "object", "required": ["type", "text"], "additionalProperties": false,
      "properties": {"type": {"const": "plain_text"}, "text": {"type": "string", "minLength": 1, "maxLength": 150}}},
    "plain75": {"type": "object", "required": ["type", "text"], "additionalProperties": false,
      "properties": {"type": {"const": "plain_text"}, "text": {"type": "string", "minLength": 1, "maxLength": 75}}},
    "text3000": {"type": "object", "required": ["type", "text"], "additionalProperties": false,
      "properties": {"type": {"enum": ["mrkdwn", "plain_text"]}, "text": {"type": "string", "minLength": 1, "maxLength": 3000}}},
    "text2000": {"type": "object", "required": ["type", "text"], "additionalProperties": false,
      "properties": {"type": {"enum": ["mrkdwn", "plain_text"]}, "text": {"type": "string", "minLength": 1, "maxLength": 2000}}}
  }
}"##;

/// A PagerDuty Events API v2 event as PagerDuty documents it.
const PAGERDUTY_EVENT_V2: &str = r##"{
  "type": "object", "required": ["routing_key", "event_action", "dedup_key"],
  "additionalProperties": false,
  "properties": {
    "routing_key": {"type": "string", "minLength": 32, "maxLength": 32},
    "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
    "dedup_key": {"type": "string", "minLength": 1, "maxLength": 255},
    "payload": {"type": "object", "required": ["summary", "source", "severity"],
      "additionalProperties": false,
      "properties": {
        "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
        "source": {"type": "string", "minLength": 1},
        "severity": {"enum": ["critical", "error", "warning", "info"]},
        "timestamp": {"type": "string", "format": "date-time"},
        "component": {"type": "string"}, "group": {"type": "string"}, "class": {"type": "string"},
        "custom_details": {"type": "object"}}},
    "images": {"type": "array"},
    "links": {"type": "array", "items": {"type": "object", "required": ["href"],
      "additionalProperties": false,
      "properties": {"href": {"type": "string", "pattern": "^https?://"}, "text": {"type": "string"}}}},
    "client": {"type": "string"},
    "client_url": {"type": "string", "pattern": "^https?://"}
  },
  "if": {"properties": {"event_action": {"const": "trigger"}}},
  "then": {"required": ["payload"]},
  "else": {"not": {"required": ["payload"]}}
}"##;

type Bodies = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A receiver that answers like Slack and PagerDuty do: 400 with the reasons for a body not
/// of their shape (the delivery then fails), 200 / 202 otherwise.
async fn shape_checking_receiver() -> (String, Bodies) {
    use axum::http::StatusCode;
    let bodies: Bodies = Arc::default();
    let check = |schema: &'static str, ok: StatusCode| {
        let validator =
            Arc::new(jsonschema::validator_for(&serde_json::from_str(schema).unwrap()).unwrap());
        move |axum::extract::Path(kind): axum::extract::Path<String>,
              State(bodies): State<Bodies>,
              body: axum::Json<serde_json::Value>| {
            let validator = Arc::clone(&validator);
            async move {
                let errors: Vec<String> = validator
                    .iter_errors(&body.0)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                bodies.lock().unwrap().push((kind, body.0));
                if errors.is_empty() {
                    (ok, String::new())
                } else {
                    (StatusCode::BAD_REQUEST, errors.join("; "))
                }
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/slack/{kind}",
            post(check(SLACK_BLOCK_KIT, StatusCode::OK)),
        )
        .route(
            "/pagerduty/{kind}",
            post(check(PAGERDUTY_EVENT_V2, StatusCode::ACCEPTED)),
        )
        .with_state(Arc::clone(&bodies));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, bodies)
}

#[tokio::test]
async fn slack_and_pagerduty_receivers_accept_every_notice_kind_in_their_own_shape() {
    use chrono::{TimeDelta, Utc};
    use trueup::config::{ChannelConfig, SecretUrl, WebhookChannel, WebhookFormat};
    use trueup::domain::{Alert, AlertState, Notice, WebUrl};

    let (base, bodies) = shape_checking_receiver().await;
    // The receiver refuses what its service would: the old `{"text"}`-only Slack body, and a
    // PagerDuty trigger without its payload.
    let client = reqwest::Client::new();
    for (path, body) in [
        ("slack/probe", serde_json::json!({"text": "x"})),
        (
            "pagerduty/probe",
            serde_json::json!({"routing_key": "R0UT1NGKEY0123456789abcdefABCDEF", "event_action": "trigger", "dedup_key": "k"}),
        ),
    ] {
        let r = client
            .post(format!("{base}/{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
    }
    bodies.lock().unwrap().clear();
    let mut inv = crate::helpers::reconcile_invariant(
        "order-events-billed",
        ("shop", "SELECT 1 AS event_id"),
        ("ledger", "SELECT 1 AS event_id"),
        &["event_id"],
    );
    inv.severity = trueup::domain::Severity::High;
    inv.owner = Some("billing-team".into());
    inv.runbook_url =
        Some(WebUrl::parse("https://wiki.example.test/runbooks/order-events").unwrap());
    inv.labels.insert("team".into(), "billing".into());
    let now = Utc::now();
    let sample = |id: i64| trueup::store::ViolationRecord {
        id,
        fingerprint: format!("f{id}"),
        invariant: "order-events-billed".into(),
        kind: "missing".into(),
        key: serde_json::json!([id]),
        status: trueup::domain::ViolationStatus::Open,
        first_seen: now,
        last_seen: now,
        resolved_at: None,
        event_at: Some(now - TimeDelta::hours(3)),
        times_reopened: 0,
        first_run_id: 7,
        last_run_id: 7,
        // A long value: Block Kit's and PagerDuty's limits must hold anyway.
        evidence: serde_json::json!({"left": {"event_id": id, "account": "acct-4", "note": "x".repeat(5000)}}),
    };
    let links = trueup::notify::NoticeLinks::new(
        &WebUrl::parse_base("https://trueup.example.test").unwrap(),
        &inv,
        Some((now - TimeDelta::hours(3), now - TimeDelta::hours(1))),
    );
    let routing_key = "R0UT1NGKEY0123456789abcdefABCDEF";
    let channel_of = |format: WebhookFormat, path: &str| {
        trueup::notify::Channel::open(&ChannelConfig::Webhook(WebhookChannel {
            url: SecretUrl::new(format!("{base}/{path}")),
            format,
            routing_key: (format == WebhookFormat::PagerDuty)
                .then(|| secrecy::SecretString::from(routing_key)),
        }))
        .unwrap()
    };
    let mut queued: Vec<trueup::store::QueuedNotice> = Vec::new();
    for (notice, state, open) in [
        (Notice::Firing, AlertState::Firing, 30),
        (Notice::Updated, AlertState::Firing, 45),
        (Notice::Repeat, AlertState::Firing, 45),
        (Notice::Resolved, AlertState::Inactive, 0),
    ] {
        let outcome = trueup::runner::RunOutcome {
            run_id: 7,
            status: trueup::domain::RunStatus::Succeeded,
            invariant: "order-events-billed".into(),
            severity: "high".into(),
            started_at: now,
            finished_at: now,
            stats: Default::default(),
            change: Some(trueup::domain::LedgerChange {
                new: if notice == Notice::Resolved { 0 } else { 15 },
                still_open: open,
                reopened: 0,
                resolved: if notice == Notice::Resolved { 45 } else { 0 },
                uncovered: 0,
            }),
            open_after: open,
            error: None,
            samples: if open > 0 {
                (1..=5).map(sample).collect()
            } else {
                Vec::new()
            },
        };
        let alert = Alert {
            state,
            active_since: (state == AlertState::Firing).then_some(now),
            last_violating_at: Some(now),
            last_notified_at: Some(now),
        };
        let messages = trueup::notify::queued(
            &inv,
            notice,
            &alert,
            &outcome,
            &trueup::domain::Route::every_channel(vec!["pager".to_owned(), "chat".to_owned()]),
            &[],
            Some(&links),
        );
        assert_eq!(messages.len(), 2);
        queued.extend(messages.iter().cloned());
        for m in &messages {
            let (format, path) = match m.delivery.channel.as_str() {
                "chat" => (WebhookFormat::Slack, "slack"),
                _ => (WebhookFormat::PagerDuty, "pagerduty"),
            };
            channel_of(format, &format!("{path}/{}", notice.as_str()))
                .deliver(&m.payload)
                .await
                .unwrap_or_else(|e| panic!("{path} refused the {} notice: {e}", notice.as_str()));
        }
    }
    let received = bodies.lock().unwrap().clone();
    let pd: Vec<&serde_json::Value> = received
        .iter()
        .filter(|(_, b)| b.get("routing_key").is_some())
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        pd.iter()
            .map(|b| b["event_action"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["trigger", "trigger", "trigger", "resolve"]
    );
    // One PagerDuty incident per alert: every notice of it carries the same dedup key.
    assert!(
        pd.iter()
            .all(|b| b["dedup_key"] == "trueup:order-events-billed")
    );
    assert_eq!(pd[0]["payload"]["severity"], "error", "high maps to error");
    assert_eq!(
        pd[0]["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["text"].as_str().unwrap())
            .collect::<Vec<_>>(),
        // No replay link: this invariant declares no `replay:`.
        [
            "Open in the console",
            "Timeline of the open violations",
            "Runbook"
        ]
    );
    let slack: Vec<&serde_json::Value> = received
        .iter()
        .filter(|(_, b)| b.get("blocks").is_some())
        .map(|(_, b)| b)
        .collect();
    assert_eq!(slack.len(), 4);
    assert_eq!(
        slack[0]["blocks"][0]["text"]["text"],
        "[trueup] FIRING high order-events-billed: 30 open violation(s)"
    );
    assert_eq!(
        slack[3]["text"],
        "[trueup] RESOLVED: order-events-billed holds again"
    );
    let samples = slack[0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|b| b["text"]["text"].as_str().filter(|t| t.starts_with("```")))
        .unwrap();
    assert!(
        samples.starts_with("```missing 1 — no right row; left: event_id=1 account=acct-4 note=x"),
        "{samples}"
    );

    // The four notices as one group on each channel: Slack takes one message listing each,
    // PagerDuty one event per notice.
    bodies.lock().unwrap().clear();
    for (channel, format, path) in [
        ("chat", WebhookFormat::Slack, "slack/group"),
        ("pager", WebhookFormat::PagerDuty, "pagerduty/group"),
    ] {
        let notices: Vec<trueup::store::WaitingNotice> = queued
            .iter()
            .filter(|q| q.delivery.channel == channel)
            .enumerate()
            .map(|(i, q)| trueup::store::WaitingNotice {
                id: i as i64 + 1,
                invariant: q.invariant.clone(),
                notice: q.notice.clone(),
                channel: channel.into(),
                group_key: q.delivery.group_key.clone(),
                group_labels: Default::default(),
                payload: q.payload.clone(),
                created_at: now,
                silenced_by: None,
            })
            .collect();
        let group = trueup::notify::message_of(&trueup::store::NoticeGroup {
            group_key: format!("{channel}/0/{{}}"),
            channel: channel.into(),
            group_labels: Default::default(),
            notices,
        });
        channel_of(format, path)
            .deliver(&group.payload)
            .await
            .unwrap_or_else(|e| panic!("{path} refused the group: {e}"));
    }
    let bodies = bodies.lock().unwrap().clone();
    let slack_group = &bodies
        .iter()
        .find(|(_, b)| b.get("blocks").is_some())
        .unwrap()
        .1;
    // Counted by invariant: its latest notice in the group says it resolved.
    assert_eq!(
        slack_group["text"],
        "[trueup] RESOLVED: 1 invariant holds again"
    );
    let sections: Vec<&str> = slack_group["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "section")
        .map(|b| b["text"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(sections.len(), 4, "one section per notice: {sections:#?}");
    assert!(sections[0].starts_with("*FIRING high order-events-billed: 30 open violation(s)*"));
    assert!(sections[3].starts_with("*RESOLVED: order-events-billed holds again*"));
    let events: Vec<&str> = bodies
        .iter()
        .filter(|(_, b)| b.get("routing_key").is_some())
        .map(|(_, b)| b["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["trigger", "trigger", "trigger", "resolve"]);
}

/// The demo's five invariants twice over (the copies named `…-eu`): ten alerts firing in one
/// outage.
fn ten_invariants(dir: &Path) {
    let rules = std::fs::read_to_string(dir.join("invariants/demo.yaml")).unwrap();
    let copies: String = rules
        .lines()
        .map(|l| match l.strip_prefix("  - name: ") {
            Some(name) => format!("  - name: {name}-eu\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join("invariants/eu.yaml"), copies).unwrap();
}

#[tokio::test]
async fn ten_invariants_failing_in_one_outage_send_one_grouped_notice_per_channel_and_a_silence_holds_only_its_own()
 {
    use crate::serve::{OPERATOR, call, tokens_yaml};
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = webhook_listener().await;
    let port = free_port();
    let smtp = SmtpServer::start(port, &dir.path().join("maildir"));
    let config = demo(
        dir.path(),
        &format!(
            "{}notifications:\n  channels:\n    ops:\n      webhook: {{url: \"{url}\"}}\n    oncall:\n      email: {{smtp: \"smtp://127.0.0.1:{port}\", from: trueup@example.com, to: [oncall@example.com]}}\n  route:\n    group_by: []\n    group_wait: 4s\n    group_interval: 1h\n",
            tokens_yaml("")
        ),
    )
    .await;
    ten_invariants(dir.path());
    let config_path = config.file.clone().unwrap();

    // Maintenance on the EU ledger: its alert is silenced from the CLI before anything runs.
    let out = crate::helpers::trueup_cli(&config_path, "ana")
        .args([
            "silence",
            "add",
            "-m",
            "invariant=payments-ledger-eu",
            "--for",
            "1h",
        ])
        .args(["--reason", "EU ledger maintenance"])
        .output()
        .unwrap();
    let said = crate::helpers::combined_output(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(
            "silence 1 holds the notices of alerts matching invariant=\"payments-ledger-eu\" until"
        ) && said.contains("it matches 1 now: payments-ledger-eu"),
        "{said}"
    );

    let server = crate::helpers::TestServer::start(config).await;
    let store = Arc::clone(&server.store);
    wait_for(
        "the grouped webhook notice",
        Duration::from_secs(30),
        || async { !received.lock().unwrap().is_empty() },
    )
    .await;
    wait_for("the grouped email", Duration::from_secs(15), || {
        let smtp = &smtp;
        async move { !smtp.messages().is_empty() }
    })
    .await;
    // More runs with the same evidence: nothing more is sent (group_interval is an hour).
    let runs = store
        .runs(Some("payments-ledger"), 100)
        .await
        .unwrap()
        .len();
    wait_for("three more runs", Duration::from_secs(10), || async {
        store
            .runs(Some("payments-ledger"), 100)
            .await
            .unwrap()
            .len()
            >= runs + 3
    })
    .await;

    let expected: Vec<String> = [
        "fulfilled-orders-paid",
        "order-events-billed",
        "payment-lifecycle",
        "payments-ledger",
        "subscriptions-entitlements",
    ]
    .iter()
    .flat_map(|n| [n.to_string(), format!("{n}-eu")])
    .filter(|n| n != "payments-ledger-eu")
    .collect();
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 1, "one message on the webhook: {got:#?}");
        let (key, group) = &got[0];
        assert_eq!(group["kind"], "group");
        assert_eq!(key.as_deref(), group["dedup_key"].as_str());
        let mut names: Vec<String> = group["invariants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        names.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(names, want, "nine invariants; the silenced one is held");
        assert_eq!(group["firing"], 9);
        assert_eq!(group["notices"].as_array().unwrap().len(), 9);
        assert!(
            group["notices"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["notice"] == "firing")
        );
    }
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "one email");
    let mail = read_email(&mails[0]);
    assert_eq!(mail["subject"], "[trueup] FIRING: 9 invariants", "{mail:#}");
    let plain = mail["text/plain"].as_str().unwrap();
    let html = mail["text/html"].as_str().unwrap();
    for name in &expected {
        assert!(
            plain.contains(&format!(" {name}: ")),
            "{name}\n---\n{plain}"
        );
        assert!(html.contains(name.as_str()), "{name}");
    }
    assert!(!plain.contains("payments-ledger-eu"), "{plain}");
    assert!(
        plain.contains("FIRING critical payments-ledger: 8 open violation(s)"),
        "{plain}"
    );

    // Both went out once the group had waited group_wait after its first notice, not before.
    let audit = store
        .audit_log(
            &trueup::store::AuditFilter::default(),
            trueup::store::AuditPage::After(None),
            500,
        )
        .await
        .unwrap();
    let first_firing = audit
        .iter()
        .filter(|e| e.action == "alert.firing")
        .map(|e| e.at)
        .min()
        .unwrap();
    for m in store.outbox(10).await.unwrap() {
        let waited = (m.created_at - first_firing).as_seconds_f64();
        assert!(
            (4.0..6.5).contains(&waited),
            "queued {waited:.2}s after the first firing"
        );
    }
    let of = |action: &str| -> Vec<(String, String)> {
        audit
            .iter()
            .filter(|e| e.action == action)
            .map(|e| (e.actor.clone(), e.target.clone()))
            .collect()
    };
    let mut grouped = of("notice.grouped");
    grouped.sort();
    assert_eq!(
        grouped,
        [
            ("scheduler".to_owned(), "channel:oncall".to_owned()),
            ("scheduler".to_owned(), "channel:ops".to_owned())
        ]
    );
    assert_eq!(
        of("notice.held"),
        vec![
            (
                "scheduler".to_owned(),
                "invariant:payments-ledger-eu".to_owned()
            );
            2
        ],
        "held on both channels"
    );
    assert_eq!(
        of("silence.create"),
        [("cli:ana".to_owned(), "silence:1".to_owned())]
    );
    // The silenced alert still changed state: it fires, only its notices were held.
    assert_eq!(
        store.alert("payments-ledger-eu").await.unwrap().state,
        trueup::domain::AlertState::Firing
    );

    // The maintenance ends early (through the API); the alert still fires: one summary.
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{}/api/v1/silences/1/expire", server.base),
        Some(OPERATOR),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["state"], "expired");
    assert_eq!(view["expired_by"], "otto");
    wait_for(
        "the summary of the held notices",
        Duration::from_secs(15),
        || async { received.lock().unwrap().len() >= 2 && smtp.messages().len() >= 2 },
    )
    .await;
    let summary = received.lock().unwrap()[1].1.clone();
    assert_eq!(summary["kind"], "notice");
    assert_eq!(summary["invariant"], "payments-ledger-eu");
    assert_eq!(summary["notice"], "repeat");
    assert_eq!(summary["held"]["notices"], 1);
    assert_eq!(summary["held"]["reason"], "EU ledger maintenance");
    // The maildir lists messages in no particular order.
    let mail = smtp
        .messages()
        .iter()
        .map(|m| read_email(m))
        .find(|m| m["subject"] != "[trueup] FIRING: 9 invariants")
        .unwrap();
    assert_eq!(
        mail["subject"],
        "[trueup] STILL FIRING after a silence critical payments-ledger-eu: 8 open violation(s)"
    );
    assert!(
        mail["text/plain"]
            .as_str()
            .unwrap()
            .contains("held:      1 notice(s) (1 firing) from "),
        "{mail:#}"
    );
    let audit = store
        .audit_trail(
            &["silence:1".to_owned()],
            first_firing - chrono::TimeDelta::hours(1),
            10,
        )
        .await
        .unwrap();
    let trail: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        trail,
        [
            ("silence.create", "cli:ana"),
            ("silence.expire", "otto"),
            ("silence.end", "scheduler")
        ]
    );
    assert_eq!(
        audit[2].details["summarised"],
        serde_json::json!(["payments-ledger-eu"])
    );
    server.stop().await;
}

#[tokio::test]
async fn a_group_still_waiting_when_trueup_is_killed_goes_out_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = webhook_listener().await;
    demo(
        dir.path(),
        &format!("notifications:\n  channels:\n    ops:\n      webhook: {{url: \"{url}\"}}\n  route:\n    group_wait: 8s\n"),
    )
    .await;
    let store = trueup::store::open(&Config::load(&dir.path().join("trueup.yaml")).unwrap().store)
        .await
        .unwrap();
    let mut first = serve_process(dir.path(), 1);
    // The five firing notices wait in their group; the process dies before it is due.
    let far = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    wait_for(
        "five notices waiting in one group",
        Duration::from_secs(15),
        || async {
            let groups = store.due_notice_groups(far).await.unwrap();
            groups.len() == 1 && groups[0].notices.len() == 5
        },
    )
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(store.outbox(10).await.unwrap().is_empty());
    assert!(received.lock().unwrap().is_empty());

    // Restarted, it sends the group once it is due: one message with the five.
    let mut second = serve_process(dir.path(), 2);
    wait_for("the grouped notice", Duration::from_secs(40), || async {
        !received.lock().unwrap().is_empty()
    })
    .await;
    wait_for("recorded delivered", Duration::from_secs(10), || async {
        store
            .outbox(10)
            .await
            .unwrap()
            .iter()
            .all(|i| i.delivered_at.is_some())
    })
    .await;
    // More runs with the same evidence: nothing more.
    let runs = store
        .runs(Some("payments-ledger"), 100)
        .await
        .unwrap()
        .len();
    wait_for("three more runs", Duration::from_secs(10), || async {
        store
            .runs(Some("payments-ledger"), 100)
            .await
            .unwrap()
            .len()
            >= runs + 3
    })
    .await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].1["kind"], "group");
    assert_eq!(got[0].1["firing"], 5);
    second.kill().unwrap();
    second.wait().unwrap();
    store.close().await;
}
