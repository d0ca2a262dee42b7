//! Notices that go out together: a due group as one outbox message, and the summary of the
//! notices a silence held, for an alert still firing when it ends.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::domain::{AlertLabels, Delivery, Silence};
use crate::store::{NoticeGroup, OutboxMessage, QueuedNotice, WaitingNotice};

/// The labels of the alert a notice payload is about (what silences match).
pub fn labels_of(payload: &Value) -> AlertLabels {
    let mut labels: BTreeMap<String, String> = payload["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    for name in crate::domain::RESERVED_LABELS {
        if let Some(v) = payload[name].as_str() {
            labels.insert(name.to_owned(), v.to_owned());
        }
    }
    AlertLabels(labels)
}

/// The outbox message of a due group: a lone notice as it is; several as one grouped
/// payload listing each (see README, "Routing and grouping").
pub fn message_of(group: &NoticeGroup) -> OutboxMessage {
    if let [only] = group.notices.as_slice() {
        return OutboxMessage {
            dedup_key: only.payload["dedup_key"]
                .as_str()
                .map_or_else(|| format!("notice-{}", only.id), str::to_owned),
            channel: group.channel.clone(),
            payload: only.payload.clone(),
        };
    }
    // Label values may hold any character; a hash keeps the key fit for a header.
    let digest = hex::encode(&Sha256::digest(group.group_key.as_bytes())[..8]);
    let first = group.notices.first().map_or(0, |n| n.id);
    let last = group.notices.last().map_or(0, |n| n.id);
    let dedup_key = format!("group-{digest}:notices-{first}-{last}");
    // Counted by invariant, as its latest notice here says: two notices of one invariant
    // (firing, then updated) are one invariant firing.
    let mut latest: Vec<(&str, &str)> = Vec::new();
    for n in &group.notices {
        match latest.iter_mut().find(|(i, _)| *i == n.invariant) {
            Some(seen) => seen.1 = &n.notice,
            None => latest.push((&n.invariant, &n.notice)),
        }
    }
    let invariants: Vec<&str> = latest.iter().map(|(i, _)| *i).collect();
    let resolved = latest.iter().filter(|(_, n)| *n == "resolved").count();
    let notices: Vec<&Value> = group.notices.iter().map(|n| &n.payload).collect();
    OutboxMessage {
        payload: json!({
            "version": super::PAYLOAD_VERSION,
            "kind": "group",
            "dedup_key": dedup_key,
            "channel": group.channel,
            "group_labels": group.group_labels,
            "status": if resolved == latest.len() { "resolved" } else { "firing" },
            "firing": latest.len() - resolved,
            "resolved": resolved,
            "invariants": invariants,
            "notices": notices,
        }),
        dedup_key,
        channel: group.channel.clone(),
    }
}

/// What replaces the notices `silence` held of one invariant in one group (`held`, oldest
/// first), once it has ended: while the alert still fires, the latest held notice as a
/// reminder that says what was held; when it stopped firing, its last `resolved` notice if
/// people had heard it fire before the silence (the first held notice is not `firing`), so a
/// receiver such as PagerDuty closes what it opened; otherwise nothing.
pub fn settle_held(
    held: &[WaitingNotice],
    silence: &Silence,
    firing: bool,
) -> Option<QueuedNotice> {
    let first = held.first()?;
    let (latest, notice) = if firing {
        (held.last()?, "repeat")
    } else if first.notice != "firing" {
        (
            held.iter().rev().find(|n| n.notice == "resolved")?,
            "resolved",
        )
    } else {
        return None;
    };
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for n in held {
        *kinds.entry(n.notice.as_str()).or_default() += 1;
    }
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let group = hex::encode(&Sha256::digest(latest.group_key.as_bytes())[..4]);
    let mut payload = latest.payload.clone();
    payload["notice"] = json!(notice);
    payload["dedup_key"] = json!(format!(
        "{}:held-by-silence-{}:{}:{group}",
        latest.invariant, silence.id, latest.channel
    ));
    payload["held"] = json!({
        "silence": silence.id,
        "reason": silence.reason,
        "created_by": silence.created_by,
        "ended_at": stamp(silence.ended_at()),
        "notices": held.len(),
        "kinds": kinds,
        "first_at": stamp(first.created_at),
        "last_at": stamp(held.last().map_or(first.created_at, |n| n.created_at)),
        "still_firing": firing,
    });
    Some(QueuedNotice {
        invariant: latest.invariant.clone(),
        notice: notice.into(),
        // Due at once: the silence has already made people wait.
        delivery: Delivery {
            channel: latest.channel.clone(),
            group_key: latest.group_key.clone(),
            group_labels: latest.group_labels.clone(),
            group_wait: TimeDelta::zero(),
            group_interval: TimeDelta::zero(),
            alone: false,
        },
        payload,
        held_by: None,
    })
}

/// The verb a notice's subject opens with.
pub(super) fn verb(payload: &Value) -> &str {
    if payload["held"]["still_firing"] == true {
        return "STILL FIRING after a silence";
    }
    match payload["notice"].as_str().unwrap_or("") {
        "firing" => "FIRING",
        "updated" => "FIRING (new violations)",
        "repeat" => "STILL FIRING",
        "resolved" => "RESOLVED",
        other => other,
    }
}

/// One line per notice of a group: what, how bad, where to look.
pub(super) fn one_line(p: &Value) -> String {
    let s = |k: &str| p[k].as_str().unwrap_or("");
    let what = if s("notice") == "resolved" {
        format!("RESOLVED {}: holds again", s("invariant"))
    } else {
        format!(
            "{} {} {}: {} open violation(s)",
            verb(p),
            s("severity"),
            s("invariant"),
            p["open_violations"]
        )
    };
    match p["links"]["invariant"].as_str() {
        Some(link) => format!("{what} — {link}"),
        None => what,
    }
}

/// The subject of a group: how many fire, how many resolved, and what they share.
pub(super) fn group_subject(p: &Value) -> String {
    let firing = p["firing"].as_u64().unwrap_or(0);
    let resolved = p["resolved"].as_u64().unwrap_or(0);
    let shared: Vec<String> = p["group_labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    let shared = if shared.is_empty() {
        String::new()
    } else {
        format!(" ({})", shared.join(", "))
    };
    let head = match (firing, resolved) {
        (1, 0) => "FIRING: 1 invariant".to_owned(),
        (f, 0) => format!("FIRING: {f} invariants"),
        (0, 1) => "RESOLVED: 1 invariant holds again".to_owned(),
        (0, r) => format!("RESOLVED: {r} invariants hold again"),
        (f, r) => format!("{f} firing, {r} resolved"),
    };
    format!("[trueup] {head}{shared}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(id: i64, invariant: &str, notice: &str) -> WaitingNotice {
        WaitingNotice {
            id,
            invariant: invariant.into(),
            notice: notice.into(),
            channel: "mail".into(),
            group_key: "mail/0/{owner=\"payments\"}".into(),
            group_labels: [("owner".to_owned(), "payments".to_owned())].into(),
            payload: json!({"kind": "notice", "dedup_key": format!("{invariant}:{notice}:run-1:mail"),
                "notice": notice, "invariant": invariant, "severity": "high", "owner": "payments",
                "open_violations": 3, "labels": {"team": "billing"}}),
            created_at: DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc)
                + TimeDelta::minutes(id),
            silenced_by: None,
        }
    }

    fn group(notices: Vec<WaitingNotice>) -> NoticeGroup {
        NoticeGroup {
            group_key: notices[0].group_key.clone(),
            channel: "mail".into(),
            group_labels: notices[0].group_labels.clone(),
            notices,
        }
    }

    #[test]
    fn a_lone_notice_goes_out_as_it_is_and_several_as_one_group_listing_each() {
        let one = message_of(&group(vec![waiting(1, "a", "firing")]));
        assert_eq!(one.dedup_key, "a:firing:run-1:mail");
        assert_eq!(one.payload["kind"], "notice");
        let many = message_of(&group(vec![
            waiting(1, "a", "firing"),
            waiting(2, "b", "firing"),
            waiting(3, "c", "resolved"),
        ]));
        assert_eq!(many.payload["kind"], "group");
        assert_eq!(many.payload["invariants"], json!(["a", "b", "c"]));
        assert_eq!(
            (
                many.payload["firing"].as_u64(),
                many.payload["resolved"].as_u64()
            ),
            (Some(2), Some(1))
        );
        assert!(
            many.dedup_key.ends_with(":notices-1-3"),
            "{}",
            many.dedup_key
        );
        assert!(many.dedup_key.is_ascii());
        assert_eq!(
            group_subject(&many.payload),
            "[trueup] 2 firing, 1 resolved (owner=payments)"
        );
    }

    #[test]
    fn a_summary_of_held_notices_says_what_was_held_by_which_silence() {
        let silence = Silence {
            id: 4,
            matchers: vec![crate::domain::Matcher::parse("invariant=a").unwrap()],
            reason: "ledger maintenance".into(),
            created_by: "cli:ana".into(),
            created_at: Utc::now(),
            ends_at: Utc::now(),
            expired_at: None,
            expired_by: None,
        };
        let held = [
            waiting(1, "a", "firing"),
            waiting(2, "a", "updated"),
            waiting(3, "a", "updated"),
        ];
        let s = settle_held(&held, &silence, true).unwrap();
        assert_eq!(s.payload["notice"], "repeat");
        assert_eq!(s.payload["held"]["notices"], 3);
        assert_eq!(
            s.payload["held"]["kinds"],
            json!({"firing": 1, "updated": 2})
        );
        assert!(
            s.payload["dedup_key"]
                .as_str()
                .unwrap()
                .starts_with("a:held-by-silence-4:mail:")
        );
        assert_eq!(s.delivery.group_wait, TimeDelta::zero());
        assert_eq!(verb(&s.payload), "STILL FIRING after a silence");
        let labels = labels_of(&s.payload);
        assert_eq!(labels.get("team"), "billing");
        assert_eq!(labels.get("invariant"), "a");
        assert!(settle_held(&[], &silence, true).is_none());
        // Stopped firing: nothing if people never heard it fire; its resolve if they did.
        assert!(settle_held(&held, &silence, false).is_none());
        let heard = [waiting(1, "a", "updated"), waiting(2, "a", "resolved")];
        let r = settle_held(&heard, &silence, false).unwrap();
        assert_eq!(r.notice, "resolved");
        assert_eq!(r.payload["notice"], "resolved");
        assert_eq!(r.payload["held"]["still_firing"], false);
    }
}
