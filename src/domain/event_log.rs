//! An event as trueup's own event log keeps it: its id and time read from the payload once,
//! when it is captured, by the log's [`EventShape`]; and what storing one delivery did
//! ([`Intake`]).

use chrono::{DateTime, TimeZone, Utc};

use super::JsonPath;

/// The longest event id a log keeps (bytes of its text).
pub const MAX_EVENT_ID_BYTES: usize = 512;

/// Where a log finds each event's id and time, and how large an event may be.
#[derive(Debug, Clone, PartialEq)]
pub struct EventShape {
    pub event_id: JsonPath,
    pub event_time: Option<JsonPath>,
    pub max_event_bytes: usize,
}

/// Why a delivery was not stored. Each is counted by its [`Refusal::reason`]; none is cut
/// down or stored in part.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the event has {bytes} bytes, over this log's max_event_bytes of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("the event is not JSON: {0}")]
    NotJson(String),
    #[error("the event has no id at `{path}`")]
    NoEventId { path: String },
    #[error(
        "the event id at `{path}` is {found}; an id is a string (without control characters) or an integer"
    )]
    BadEventId { path: String, found: String },
    #[error("the event id at `{path}` has {bytes} bytes, over {MAX_EVENT_ID_BYTES}")]
    LongEventId { path: String, bytes: usize },
    #[error(
        "the event time at `{path}` is {found}; a time is RFC 3339 text (like 2026-12-05T10:00:00Z) or seconds since 1970"
    )]
    BadEventTime { path: String, found: String },
    #[error("the signature header {header} is missing")]
    NoSignature { header: String },
    #[error(
        "the signature does not match the body (signed with another secret, or the body was changed)"
    )]
    BadSignature,
    #[error("the signature header is not `t=<unix seconds>,v1=<hex HMAC-SHA256>`: {0}")]
    MalformedSignature(String),
    #[error(
        "the signature was made at {signed_at}, more than the tolerance of {tolerance} from now: a replayed or delayed request"
    )]
    Expired {
        signed_at: DateTime<Utc>,
        tolerance: String,
    },
}

impl Refusal {
    /// The `reason` label of `trueup_log_events_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "too_large",
            Refusal::NotJson(_)
            | Refusal::NoEventId { .. }
            | Refusal::BadEventId { .. }
            | Refusal::LongEventId { .. }
            | Refusal::BadEventTime { .. } => "malformed",
            Refusal::NoSignature { .. }
            | Refusal::BadSignature
            | Refusal::MalformedSignature(_) => "signature",
            Refusal::Expired { .. } => "expired",
        }
    }
}

/// The id and business time of one event, read from its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct EventIdentity {
    pub event_id: String,
    pub event_at: Option<DateTime<Utc>>,
}

impl EventShape {
    /// Reads an event's id and time from its payload, or says why it cannot be kept.
    pub fn identify(&self, payload: &[u8]) -> Result<EventIdentity, Refusal> {
        if payload.len() > self.max_event_bytes {
            return Err(Refusal::TooLarge {
                bytes: payload.len(),
                max: self.max_event_bytes,
            });
        }
        let doc: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| Refusal::NotJson(e.to_string()))?;
        let path = self.event_id.to_string();
        let event_id = match self.event_id.find(&doc) {
            None | Some(serde_json::Value::Null) => return Err(Refusal::NoEventId { path }),
            Some(serde_json::Value::String(s)) if s.is_empty() => {
                return Err(Refusal::BadEventId {
                    path,
                    found: "an empty string".into(),
                });
            }
            // A control character (NUL above all, which PostgreSQL text refuses) is no id.
            Some(serde_json::Value::String(s)) if s.chars().any(char::is_control) => {
                return Err(Refusal::BadEventId {
                    path,
                    found: describe(&serde_json::Value::String(s.clone())),
                });
            }
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(other) => {
                return Err(Refusal::BadEventId {
                    path,
                    found: describe(other),
                });
            }
        };
        if event_id.len() > MAX_EVENT_ID_BYTES {
            return Err(Refusal::LongEventId {
                path,
                bytes: event_id.len(),
            });
        }
        let event_at = match &self.event_time {
            None => None,
            Some(time_path) => Some(event_time(time_path, time_path.find(&doc))?),
        };
        Ok(EventIdentity { event_id, event_at })
    }
}

fn event_time(
    path: &JsonPath,
    found: Option<&serde_json::Value>,
) -> Result<DateTime<Utc>, Refusal> {
    let bad = |found: String| Refusal::BadEventTime {
        path: path.to_string(),
        found,
    };
    // Past year 9999 no time is meant: milliseconds given as seconds (JavaScript's
    // `Date.now()`, 1764925200500) read as the year 57,900, which the SQLite store's text
    // sorts before 2026 and retention would take for the earliest time still needed.
    let latest = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).single();
    let in_range = |t: DateTime<Utc>| latest.is_some_and(|l| t <= l);
    let too_late = |found: String| {
        bad(format!(
            "{found}, after the year 9999 (milliseconds given as seconds? divide by 1000)"
        ))
    };
    let t = match found {
        None | Some(serde_json::Value::Null) => return Err(bad("missing".into())),
        Some(v @ serde_json::Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| bad(describe(v)))?,
        Some(serde_json::Value::Number(n)) => n
            .as_f64()
            .filter(|secs| secs.is_finite() && *secs >= 0.0)
            .and_then(|secs| {
                let whole = secs.trunc() as i64;
                let nanos = ((secs - secs.trunc()) * 1e9).round() as u32;
                Utc.timestamp_opt(whole, nanos.min(999_999_999)).single()
            })
            .ok_or_else(|| too_late(n.to_string()))?,
        Some(other) => return Err(bad(describe(other))),
    };
    if in_range(t) {
        Ok(t)
    } else {
        Err(too_late(found.map(describe_time).unwrap_or_default()))
    }
}

/// A found time as the refusal shows it: a number as written, anything else described.
fn describe_time(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => n.to_string(),
        other => describe(other),
    }
}

fn describe(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("the boolean {b}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        // Quoted with its control characters escaped, and cut short: it goes into log lines.
        serde_json::Value::String(s) => {
            let short: String = s.chars().take(80).collect();
            let more = if short.len() < s.len() { "…" } else { "" };
            format!("{short:?}{more}")
        }
        serde_json::Value::Array(_) => "a list".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

/// One delivery of an event, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedEvent {
    pub identity: EventIdentity,
    /// The feed it came from: `nats:SOURCE/STREAM`, `redis:SOURCE/KEY` or `webhook`.
    pub source: String,
    /// Where in that feed (a stream sequence, an entry id); none for a webhook, whose every
    /// request is a delivery of its own.
    pub position: Option<String>,
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub payload: Vec<u8>,
}

/// What storing one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// The first delivery of its id: stored.
    Stored,
    /// Its id was stored before: not stored again, counted (`deliveries` is the new count).
    Duplicate { deliveries: u64 },
    /// This very delivery (same feed and position) was stored or counted before and came
    /// again because it was not acknowledged (a crash between commit and acknowledgement):
    /// neither stored nor counted again.
    Redelivered,
}

/// What became of a logged event, as an invariant that reads its log on the left found it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    /// A full run found it downstream, as it should be.
    Processed,
    /// A full run found nothing downstream for it.
    Missing,
    /// A full run found it downstream, different.
    Mismatched,
    /// A replay action delivered it.
    Replayed,
}

impl EventOutcome {
    pub const ALL: [EventOutcome; 4] = [
        EventOutcome::Processed,
        EventOutcome::Missing,
        EventOutcome::Mismatched,
        EventOutcome::Replayed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Processed => "processed",
            EventOutcome::Missing => "missing",
            EventOutcome::Mismatched => "mismatched",
            EventOutcome::Replayed => "replayed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == raw)
    }

    /// The outcome a violation of `kind` on the event's key gives it, if any: a duplicate or
    /// an extra row says nothing of whether the event got through.
    pub fn of_violation(kind: super::ViolationKind) -> Option<Self> {
        match kind {
            super::ViolationKind::Missing => Some(EventOutcome::Missing),
            super::ViolationKind::Mismatch => Some(EventOutcome::Mismatched),
            _ => None,
        }
    }

    /// Whether a run that no longer finds the event violated makes it `processed` (a
    /// replayed event stays replayed: that is how it got through).
    pub fn heals(self) -> bool {
        matches!(self, EventOutcome::Missing | EventOutcome::Mismatched)
    }
}

/// The downstream record an event with this key (as violations hold it: a JSON array of
/// canonical values) became: the one value as text, or the array for a key of several
/// columns.
pub fn record_id_of_key(key: &serde_json::Value) -> String {
    match key {
        serde_json::Value::Array(one) if one.len() == 1 => match &one[0] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

impl std::fmt::Display for EventOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(id: &str, time: Option<&str>) -> EventShape {
        EventShape {
            event_id: JsonPath::parse(id).unwrap(),
            event_time: time.map(|t| JsonPath::parse(t).unwrap()),
            max_event_bytes: 200,
        }
    }

    #[test]
    fn an_event_id_is_read_from_its_path_as_text_or_an_integer() {
        let s = shape("data.id", None);
        let got = s.identify(br#"{"data":{"id":"evt_1"}}"#).unwrap();
        assert_eq!(got.event_id, "evt_1");
        assert_eq!(got.event_at, None);
        assert_eq!(s.identify(br#"{"data":{"id":42}}"#).unwrap().event_id, "42");
    }

    #[test]
    fn an_event_without_a_usable_id_is_refused_as_malformed_and_says_where_it_looked() {
        let s = shape("id", None);
        for (body, says) in [
            (&br#"{"other":1}"#[..], "no id at `id`"),
            (br#"{"id":null}"#, "no id at `id`"),
            (br#"{"id":""}"#, "an empty string"),
            (br#"{"id":1.5}"#, "the number 1.5"),
            (br#"{"id":{"a":1}}"#, "an object"),
            (br#"{"id":"evt\u0000x"}"#, r#""evt\0x""#),
            (b"not json", "not JSON"),
        ] {
            let err = s.identify(body).unwrap_err();
            assert_eq!(err.reason(), "malformed");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn an_event_over_the_size_cap_is_refused_as_too_large_before_it_is_parsed() {
        let s = shape("id", None);
        let body = format!(r#"{{"id":"x","pad":"{}"}}"#, "a".repeat(300));
        let err = s.identify(body.as_bytes()).unwrap_err();
        assert_eq!(err.reason(), "too_large");
        assert!(
            err.to_string()
                .contains("over this log's max_event_bytes of 200"),
            "{err}"
        );
    }

    #[test]
    fn an_event_time_is_rfc3339_text_or_epoch_seconds_and_is_required_when_the_log_names_it() {
        let s = shape("id", Some("at"));
        let t = s
            .identify(br#"{"id":"a","at":"2026-12-05T10:00:00+01:00"}"#)
            .unwrap();
        assert_eq!(
            t.event_at.unwrap().to_rfc3339(),
            "2026-12-05T09:00:00+00:00"
        );
        let t = s.identify(br#"{"id":"a","at":1764925200.5}"#).unwrap();
        assert_eq!(t.event_at.unwrap().timestamp_millis(), 1_764_925_200_500);
        for body in [
            &br#"{"id":"a"}"#[..],
            br#"{"id":"a","at":"yesterday"}"#,
            br#"{"id":"a","at":-1}"#,
        ] {
            let err = s.identify(body).unwrap_err();
            assert!(matches!(err, Refusal::BadEventTime { .. }), "{err}");
        }
        // Milliseconds where seconds belong (the year 57,900) are refused, saying so.
        let err = s.identify(br#"{"id":"a","at":1764925200500}"#).unwrap_err();
        assert!(
            matches!(err, Refusal::BadEventTime { .. })
                && err.to_string().contains("after the year 9999"),
            "{err}"
        );
        assert!(s.identify(br#"{"id":"a","at":253402300799}"#).is_ok());
    }
}
