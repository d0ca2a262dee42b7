//! Alert notifications: what a notice says and how each channel sends it (`serve`'s outbox
//! worker delivers them).
//!
//! Notices are never sent directly: they are written to the store's outbox in the same
//! transaction as the alert change, and the outbox worker delivers them with retries and backoff.
//! Delivery is at least once; every message carries a stable `dedup_key`.

mod email;
pub mod formats;
mod group;
mod html;
mod webhook;

pub use group::{labels_of, message_of, settle_held};

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::config::ChannelConfig;
use crate::domain::{Alert, AlertLabels, Invariant, InvariantSpec, Notice, Route, Silence, WebUrl};
use crate::runner::RunOutcome;
use crate::store::QueuedNotice;

/// How much of a sample's evidence a notice shows (each value is capped already).
const EVIDENCE_CHARS: usize = 300;

/// The version of the JSON payload below; bumped on any incompatible change.
pub const PAYLOAD_VERSION: u32 = 1;

/// Where a notice sends a person: the console's pages for the invariant, under
/// `serve.external_url`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NoticeLinks {
    /// The invariant's page.
    pub invariant: String,
    /// Its timeline over the event times of the violations open now.
    pub timeline: Option<String>,
    /// The dry run of a replay of that window (a reconcile that declares `replay:`); it
    /// delivers nothing.
    pub replay_dry_run: Option<String>,
}

impl NoticeLinks {
    /// The links for `invariant`, its violations' events spanning `events` (first, last).
    pub fn new(
        base: &WebUrl,
        invariant: &Invariant,
        events: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Self {
        let name = invariant.name.as_str();
        let page = format!("/ui/invariants/{name}");
        // The window's end is exclusive: one second past the last event (times are written
        // to the second).
        let window = events.map(|(first, last)| {
            (
                first.to_rfc3339_opts(SecondsFormat::Secs, true),
                (last + chrono::TimeDelta::seconds(1)).to_rfc3339_opts(SecondsFormat::Secs, true),
            )
        });
        let replayable =
            invariant.replay.is_some() && matches!(invariant.spec, InvariantSpec::Reconcile(_));
        Self {
            invariant: base.join(&page, &[]),
            timeline: window
                .as_ref()
                .map(|(from, to)| base.join(&page, &[("from", from), ("to", to)])),
            replay_dry_run: window.as_ref().filter(|_| replayable).map(|(from, to)| {
                base.join(
                    "/ui/replay",
                    &[("invariant", name), ("from", from), ("to", to)],
                )
            }),
        }
    }
}

/// The notices to queue for one alert notice: one per channel the route tree (or the
/// invariant's own `notify:` list) sends it to, each in its group, held if a silence among
/// `silences` (the active ones) matches the invariant.
pub fn queued(
    invariant: &Invariant,
    notice: Notice,
    alert: &Alert,
    outcome: &RunOutcome,
    route: &Route,
    silences: &[Silence],
    links: Option<&NoticeLinks>,
) -> Vec<QueuedNotice> {
    let labels = AlertLabels::of(invariant);
    let deliveries = match &invariant.notify {
        // An invariant that names its channels is sent to exactly those, grouped as the root
        // route groups.
        Some(list) => route.own_deliveries(&labels, "notify", list),
        None => route.deliveries(&labels),
    };
    let held_by = silences.iter().find(|s| s.matches(&labels)).map(|s| s.id);
    deliveries
        .into_iter()
        .map(|delivery| {
            let dedup_key = format!(
                "{}:{}:run-{}:{}",
                invariant.name,
                notice.as_str(),
                outcome.run_id,
                delivery.channel
            );
            let mut delivery = delivery;
            if delivery.alone {
                delivery.group_key = format!("{}/{dedup_key}", delivery.group_key);
            }
            QueuedNotice {
                invariant: invariant.name.to_string(),
                notice: notice.as_str().to_owned(),
                payload: payload(invariant, notice, alert, outcome, links, &dedup_key),
                delivery,
                held_by,
            }
        })
        .collect()
}

fn time(t: Option<DateTime<Utc>>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| {
        json!(t.to_rfc3339_opts(SecondsFormat::Secs, true))
    })
}

/// The documented JSON payload (see README, "Notifications").
fn payload(
    invariant: &Invariant,
    notice: Notice,
    alert: &Alert,
    outcome: &RunOutcome,
    links: Option<&NoticeLinks>,
    dedup_key: &str,
) -> serde_json::Value {
    use crate::domain::evidence::{evidence_line, key};
    let samples: Vec<serde_json::Value> = outcome
        .samples
        .iter()
        .take(5)
        .map(|v| {
            json!({
                "kind": v.kind,
                "key": v.key,
                "status": v.status,
                "evidence": v.evidence,
                // As `trueup check` prints it.
                "text": format!(
                    "{} {} — {}",
                    v.kind,
                    key(&v.key),
                    evidence_line(&v.kind, &v.evidence, EVIDENCE_CHARS)
                ),
            })
        })
        .collect();
    let counts: BTreeMap<String, u64> = outcome
        .stats
        .counts
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    json!({
        "version": PAYLOAD_VERSION,
        "kind": "notice",
        "dedup_key": dedup_key,
        "notice": notice,
        "state": alert.state,
        "invariant": invariant.name,
        "severity": invariant.severity,
        "owner": invariant.owner,
        "description": invariant.description,
        "active_since": time(alert.active_since),
        "at": time(Some(outcome.finished_at)),
        "run_id": outcome.run_id,
        "open_violations": outcome.open_after,
        "new_violations": outcome.change.map_or(0, |c| c.new + c.reopened),
        "counts": counts,
        "samples": samples,
        "runbook_url": invariant.runbook_url,
        "labels": invariant.labels,
        "links": links,
    })
}

/// A one-line summary and a plain-text body, for email and chat: of one notice, or of a
/// group (each of its notices in one line, then each in full).
pub fn text(payload: &serde_json::Value) -> (String, String) {
    if payload["kind"] == "group" {
        let subject = group::group_subject(payload);
        let notices = payload["notices"].as_array().map_or(&[][..], Vec::as_slice);
        let mut body = format!("{subject}\n\n");
        for p in notices {
            body.push_str(&format!("  {}\n", group::one_line(p)));
        }
        for p in notices {
            let (one, detail) = notice_text(p);
            body.push_str(&format!("\n──── {one}\n"));
            // The notice's own subject is its heading; its body follows.
            body.push_str(detail.split_once("\n\n").map_or("", |(_, rest)| rest));
        }
        body.push_str(&format!(
            "\ndedup key: {}\n",
            payload["dedup_key"].as_str().unwrap_or("")
        ));
        return (subject, body);
    }
    notice_text(payload)
}

fn notice_text(payload: &serde_json::Value) -> (String, String) {
    let s = |k: &str| payload[k].as_str().unwrap_or("").to_owned();
    let notice = s("notice");
    let verb = group::verb(payload);
    let subject = if notice == "resolved" {
        format!("[trueup] {verb}: {} holds again", s("invariant"))
    } else {
        format!(
            "[trueup] {verb} {} {}: {} open violation(s)",
            s("severity"),
            s("invariant"),
            payload["open_violations"]
        )
    };
    let mut body = format!(
        "{subject}\n\ninvariant: {}\nseverity:  {}\nowner:     {}\nsince:     {}\nrun:       {} at {}\n",
        s("invariant"),
        s("severity"),
        s("owner"),
        s("active_since"),
        payload["run_id"],
        s("at"),
    );
    if let Some(labels) = payload["labels"].as_object().filter(|l| !l.is_empty()) {
        let list: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        body.push_str(&format!("labels:    {}\n", list.join(" ")));
    }
    if let Some(held) = payload.get("held").filter(|h| h.is_object()) {
        body.push_str(&format!("held:      {}\n", held_line(held)));
    }
    if let Some(d) = payload["description"].as_str() {
        body.push_str(&format!("\n{d}\n"));
    }
    body.push('\n');
    if let Some(r) = payload["runbook_url"].as_str() {
        body.push_str(&format!("runbook:   {r}\n"));
    }
    let links = &payload["links"];
    match links["invariant"].as_str() {
        Some(page) => {
            body.push_str(&format!("console:   {page}\n"));
            if let Some(t) = links["timeline"].as_str() {
                body.push_str(&format!("timeline:  {t}\n"));
            }
            if let Some(r) = links["replay_dry_run"].as_str() {
                body.push_str(&format!(
                    "replay:    {r} (a dry run: it delivers nothing)\n"
                ));
            }
        }
        None => body.push_str(
            "console:   set serve.external_url in trueup.yaml for links to the console\n",
        ),
    }
    if let Some(counts) = payload["counts"].as_object().filter(|c| !c.is_empty()) {
        let list: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        body.push_str(&format!("\nby kind: {}\n", list.join(", ")));
    }
    if let Some(samples) = payload["samples"].as_array().filter(|s| !s.is_empty()) {
        body.push_str("\nsamples:\n");
        for v in samples {
            body.push_str(&format!("  {}\n", v["text"].as_str().unwrap_or("")));
        }
    }
    body.push_str(&format!("\ndedup key: {}\n", s("dedup_key")));
    (subject, body)
}

/// What a silence held of a notice, in one line.
pub(super) fn held_line(held: &serde_json::Value) -> String {
    let kinds: Vec<String> = held["kinds"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    format!(
        "{} notice(s) ({}) from {} to {} were held by silence {} ({}, by {}), which ended at {}; {}",
        held["notices"],
        kinds.join(", "),
        held["first_at"].as_str().unwrap_or(""),
        held["last_at"].as_str().unwrap_or(""),
        held["silence"],
        held["reason"].as_str().unwrap_or(""),
        held["created_by"].as_str().unwrap_or(""),
        held["ended_at"].as_str().unwrap_or(""),
        if held["still_firing"] == true {
            "it still fires"
        } else {
            "it has stopped firing"
        },
    )
}

/// Why a channel could not be opened or a notice not delivered (recorded with the notice,
/// which is tried again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("bad smtp address `{0}`; write it as smtp://host:port, smtp+starttls:// or smtps://")]
    BadSmtpAddress(String),
    #[error("bad port in `{0}`")]
    BadPort(String),
    #[error("unknown smtp scheme `{0}`; use smtp, smtp+starttls or smtps")]
    UnknownScheme(String),
    #[error("address `{address}`: {message}")]
    BadMailbox { address: String, message: String },
    /// A TLS relay or an HTTP client that could not be set up.
    #[error("{0}")]
    Setup(String),
    #[error("cannot build the email: {0}")]
    BuildEmail(String),
    #[error("SMTP: {0}")]
    Smtp(String),
    #[error("webhook request timed out after {0}s")]
    WebhookTimeout(u64),
    #[error("webhook request failed: {0}")]
    WebhookRequest(String),
    #[error("webhook answered {0}")]
    WebhookStatus(String),
}

/// A channel ready to send.
pub enum Channel {
    Email(Box<email::EmailSender>),
    Webhook(webhook::WebhookSender),
}

impl Channel {
    pub fn open(config: &ChannelConfig) -> Result<Self, ChannelError> {
        match config {
            ChannelConfig::Email(e) => {
                email::EmailSender::new(e).map(|s| Channel::Email(Box::new(s)))
            }
            ChannelConfig::Webhook(w) => webhook::WebhookSender::new(w).map(Channel::Webhook),
        }
    }

    pub async fn deliver(&self, payload: &serde_json::Value) -> Result<(), ChannelError> {
        match self {
            Channel::Email(e) => e.send(payload).await,
            Channel::Webhook(w) => w.send(payload).await,
        }
    }
}
