//! The shapes real receivers take, made from the notice payload: Slack Block Kit and the
//! PagerDuty Events API v2. Each keeps within its receiver's documented limits.

use serde_json::{Value, json};

/// Cuts `text` to `max` characters (Block Kit and PagerDuty refuse longer fields).
fn cap(text: &str, max: usize) -> String {
    crate::domain::evidence::truncate(text, max)
}

/// The links a notice carries, labelled for a button or a PagerDuty link.
fn labelled_links(payload: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let links = &payload["links"];
    for (label, url) in [
        ("Open in the console", links["invariant"].as_str()),
        (
            "Timeline of the open violations",
            links["timeline"].as_str(),
        ),
        (
            "Dry-run a replay of the window",
            links["replay_dry_run"].as_str(),
        ),
        ("Runbook", payload["runbook_url"].as_str()),
    ] {
        if let Some(url) = url {
            out.push((label, url.to_owned()));
        }
    }
    out
}

/// The samples as `trueup check` prints them.
fn sample_lines(payload: &Value) -> Vec<&str> {
    payload["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["text"].as_str())
        .collect()
}

/// A Slack Block Kit message: a header, the facts as fields, the samples, the links as
/// buttons; `text` is the fallback for notifications and for receivers without blocks.
pub fn slack(payload: &Value) -> Value {
    if payload["kind"] == "group" {
        return slack_group(payload);
    }
    let (subject, _) = super::text(payload);
    let s = |k: &str| payload[k].as_str().unwrap_or("—").to_owned();
    let mut fields = vec![
        format!("*Severity*\n{}", s("severity")),
        format!("*Open violations*\n{}", payload["open_violations"]),
        format!("*Owner*\n{}", s("owner")),
        format!("*Since*\n{}", s("active_since")),
    ];
    if let Some(labels) = payload["labels"].as_object().filter(|l| !l.is_empty()) {
        let list: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        fields.push(format!("*Labels*\n{}", list.join(" ")));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cap(&subject, 150)}}),
        json!({"type": "section", "fields": fields.iter()
            .map(|f| json!({"type": "mrkdwn", "text": cap(f, 2000)}))
            .collect::<Vec<_>>()}),
    ];
    if let Some(d) = payload["description"].as_str() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cap(d, 3000)}}));
    }
    let samples = sample_lines(payload);
    if !samples.is_empty() {
        // A code block: its characters are shown as they are.
        let text = format!("```{}```", cap(&samples.join("\n"), 2900));
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    let buttons: Vec<Value> = labelled_links(payload)
        .into_iter()
        .map(|(label, url)| {
            json!({"type": "button", "text": {"type": "plain_text", "text": label}, "url": cap(&url, 3000)})
        })
        .collect();
    if !buttons.is_empty() {
        blocks.push(json!({"type": "actions", "elements": buttons}));
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": cap(&format!("dedup key: {}", s("dedup_key")), 2000)}
    ]}));
    json!({ "text": cap(&subject, 3000), "blocks": blocks })
}

/// Block Kit allows 50 blocks: a header, a section per notice, a note of the rest, the key.
const SLACK_NOTICES: usize = 46;

/// A group in Block Kit: a header saying what the notices share, a section per notice (its
/// line, first samples and a button to its page), the dedup key.
fn slack_group(payload: &Value) -> Value {
    let (subject, _) = super::text(payload);
    let notices: Vec<&Value> = payload["notices"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut blocks =
        vec![json!({"type": "header", "text": {"type": "plain_text", "text": cap(&subject, 150)}})];
    for p in notices.iter().take(SLACK_NOTICES) {
        let (one, _) = super::text(p);
        let mut text = format!("*{}*", one.trim_start_matches("[trueup] "));
        let samples = sample_lines(p);
        if !samples.is_empty() {
            text.push_str(&format!(
                "\n```{}```",
                samples
                    .iter()
                    .take(3)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        let mut section =
            json!({"type": "section", "text": {"type": "mrkdwn", "text": cap(&text, 3000)}});
        if let Some((label, url)) = labelled_links(p).into_iter().next() {
            section["accessory"] = json!({"type": "button", "text": {"type": "plain_text", "text": label}, "url": cap(&url, 3000)});
        }
        blocks.push(section);
    }
    if notices.len() > SLACK_NOTICES {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!(
            "… and {} more; the console lists every invariant firing now.", notices.len() - SLACK_NOTICES
        )}}));
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": cap(&format!("dedup key: {}", payload["dedup_key"].as_str().unwrap_or("")), 2000)}
    ]}));
    json!({ "text": cap(&subject, 3000), "blocks": blocks })
}

/// The PagerDuty events of a notice, or of each notice of a group: PagerDuty groups by
/// its own rules, so each alert stays its own incident.
/// Each event comes with the dedup key of its own notice (its `Idempotency-Key`).
pub fn pagerduty_events(payload: &Value, routing_key: &str) -> Vec<(Value, Option<String>)> {
    let one = |p: &Value| {
        (
            pagerduty(p, routing_key),
            p["dedup_key"].as_str().map(str::to_owned),
        )
    };
    if payload["kind"] == "group" {
        payload["notices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(one)
            .collect()
    } else {
        vec![one(payload)]
    }
}

/// PagerDuty's severities from trueup's.
fn pagerduty_severity(severity: &str) -> &'static str {
    match severity {
        "critical" => "critical",
        "high" => "error",
        "medium" => "warning",
        _ => "info",
    }
}

/// A PagerDuty Events API v2 event. Its `dedup_key` is the invariant's, the same for every
/// notice of one alert: `firing`, `updated` and `repeat` trigger (PagerDuty adds them to the
/// open incident), `resolved` resolves it.
pub fn pagerduty(payload: &Value, routing_key: &str) -> Value {
    let invariant = payload["invariant"].as_str().unwrap_or("");
    let dedup_key = format!("trueup:{invariant}");
    if payload["notice"] == "resolved" {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let (subject, _) = super::text(payload);
    let links: Vec<Value> = labelled_links(payload)
        .into_iter()
        .map(|(text, href)| json!({"href": href, "text": text}))
        .collect();
    let samples = sample_lines(payload);
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": cap(subject.trim_start_matches("[trueup] "), 1024),
            "source": "trueup",
            "severity": pagerduty_severity(payload["severity"].as_str().unwrap_or("")),
            "timestamp": payload["at"],
            "component": invariant,
            "class": payload["notice"],
            "custom_details": {
                "open_violations": payload["open_violations"],
                "new_violations": payload["new_violations"],
                "counts": payload["counts"],
                "samples": samples,
                "labels": payload["labels"],
                "description": payload["description"],
                "run_id": payload["run_id"],
            },
        },
        "client": "trueup",
        "links": links,
    });
    if let Some(console) = payload["links"]["invariant"].as_str() {
        event["client_url"] = json!(console);
    }
    // PagerDuty's `group` is a string when present: the owning team.
    if let Some(owner) = payload["owner"].as_str() {
        event["payload"]["group"] = json!(owner);
    }
    event
}
