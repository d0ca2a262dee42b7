//! The file format as written, before validation. Unknown keys are tolerated here because the
//! shape pass (`shape.rs`) reports all of them at once, with suggestions.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Deserialize)]
pub struct RawFile {
    #[serde(default)]
    pub invariants: Vec<Spanned<RawInvariant>>,
}

#[derive(Deserialize)]
pub struct RawInvariant {
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub severity: Option<Spanned<String>>,
    pub schedule: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
    pub time_column: Option<Spanned<String>>,
    pub alert: Option<Spanned<RawAlert>>,
    pub sample_limit: Option<u32>,
    pub violation_budget: Option<Spanned<u64>>,
    pub check: Option<Spanned<RawCheck>>,
    pub reconcile: Option<Spanned<RawReconcile>>,
    pub transitions: Option<Spanned<RawTransitions>>,
    pub compensate: Option<Spanned<RawCompensate>>,
    pub replay: Option<Spanned<RawReplay>>,
    pub slo: Option<Spanned<RawSlo>>,
    pub runbook_url: Option<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, Spanned<String>>,
}

/// `slo:` — a consistency objective.
#[derive(Deserialize)]
pub struct RawSlo {
    pub objective: Option<Spanned<ScalarText>>,
    pub max_open: Option<Spanned<String>>,
    pub window: Option<Spanned<String>>,
}

/// A scalar read as the text written: `99.9%` and `99.9` alike.
#[derive(Debug, Clone)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ScalarText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a percentage")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
pub struct RawAlert {
    #[serde(rename = "for")]
    pub for_: Option<Spanned<String>>,
    pub keep_firing_for: Option<Spanned<String>>,
    pub repeat_interval: Option<Spanned<String>>,
    pub notify: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
pub struct RawCheck {
    pub source: Spanned<String>,
    pub query: Option<Spanned<String>>,
    pub request: Option<Spanned<RawRequest>>,
    pub stream: Option<Spanned<RawStream>>,
    pub key: Spanned<OneOrMany>,
}

#[derive(Deserialize)]
pub struct RawSide {
    pub source: Spanned<String>,
    pub query: Option<Spanned<String>>,
    pub request: Option<Spanned<RawRequest>>,
    pub stream: Option<Spanned<RawStream>>,
}

/// `stream:` — a side read from a NATS JetStream stream (a source of `kind: nats`).
#[derive(Deserialize)]
pub struct RawStream {
    pub lookup: Option<Spanned<RawLookup>>,
    pub name: Option<Spanned<String>>,
    /// A Redis stream's key (`kind: redis`).
    pub key: Option<Spanned<String>>,
    pub subject: Option<Spanned<String>>,
    pub columns: Option<Spanned<RawColumns>>,
}

/// `columns:` of a request or stream side, in the order written: rows, evidence and
/// templates show them so, as a query's columns show in its SELECT order.
pub type RawColumns = indexmap::IndexMap<String, Spanned<RawField>>;

/// `request:` — a side read from an HTTP API (a source of `kind: http`).
#[derive(Deserialize)]
pub struct RawRequest {
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<ScalarText>>,
    pub items: Option<Spanned<String>>,
    pub page: Option<Spanned<RawPage>>,
    pub columns: Option<Spanned<RawColumns>>,
    pub lookup: Option<Spanned<RawLookup>>,
}

/// `lookup:` — how one key's item is fetched alone.
#[derive(Deserialize)]
pub struct RawLookup {
    pub path: Option<Spanned<String>>,
    pub item: Option<Spanned<String>>,
    /// A NATS stream's: the subject of one key's messages.
    pub subject: Option<Spanned<String>>,
}

/// `page:` — one of the paging styles.
#[derive(Deserialize)]
pub struct RawPage {
    pub cursor: Option<Spanned<RawCursor>>,
    pub link: Option<Spanned<String>>,
    pub offset: Option<Spanned<RawOffset>>,
    pub number: Option<Spanned<RawNumber>>,
}

#[derive(Deserialize)]
pub struct RawCursor {
    pub param: Option<Spanned<String>>,
    pub from_item: Option<Spanned<String>>,
    pub from_response: Option<Spanned<String>>,
    pub has_more: Option<Spanned<String>>,
}

#[derive(Deserialize)]
pub struct RawOffset {
    pub param: Option<Spanned<String>>,
    pub size: Option<Spanned<u64>>,
    pub size_param: Option<Spanned<String>>,
}

#[derive(Deserialize)]
pub struct RawNumber {
    pub param: Option<Spanned<String>>,
    pub first: Option<Spanned<u64>>,
}

/// A column of an item: `id` (its path, the type as JSON has it) or `{path: .., type: ..}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RawField {
    Path(String),
    Typed(RawTypedField),
}

#[derive(Deserialize)]
pub struct RawTypedField {
    pub path: Option<String>,
    /// A stream message's header, or its metadata (`time`, `sequence`, `subject`).
    pub header: Option<String>,
    pub meta: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Deserialize)]
pub struct RawReconcile {
    pub left: Spanned<RawSide>,
    pub right: Spanned<RawSide>,
    pub key: Spanned<OneOrMany>,
    pub expect: Option<Spanned<String>>,
    pub compare: Option<Spanned<OneOrMany>>,
    pub mode: Option<Spanned<String>>,
    pub incremental: Option<Spanned<RawIncremental>>,
    pub segments: Option<Spanned<u64>>,
    pub window: Option<Spanned<String>>,
}

#[derive(Deserialize)]
pub struct RawIncremental {
    pub column: Option<Spanned<RawChangeColumn>>,
    pub lookback: Option<Spanned<String>>,
    pub full_every: Option<Spanned<String>>,
}

/// `column: updated_at` (both sides) or `column: {left: updated_at, right: recorded_at}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RawChangeColumn {
    Both(String),
    PerSide(RawChangeColumns),
}

#[derive(Deserialize)]
pub struct RawChangeColumns {
    pub left: Option<String>,
    pub right: Option<String>,
}

#[derive(Deserialize)]
pub struct RawTransitions {
    pub source: Spanned<String>,
    pub query: Option<Spanned<String>>,
    pub request: Option<Spanned<RawRequest>>,
    pub stream: Option<Spanned<RawStream>>,
    pub key: Spanned<OneOrMany>,
    pub state: Option<Spanned<String>>,
    pub at: Option<Spanned<String>>,
    pub initial: Option<Spanned<OneOrMany>>,
    pub allowed: Spanned<BTreeMap<String, OneOrMany>>,
}

/// `key: id` or `key: [tenant, id]`.
#[derive(Debug, Clone, Default)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<OneOrMany, E> {
                Ok(OneOrMany(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `compensate:`: per violation kind (its name as the key), one action.
pub type RawCompensate = BTreeMap<String, Spanned<RawAction>>;

#[derive(Deserialize)]
pub struct RawAction {
    pub sql: Option<Spanned<RawSql>>,
    pub http: Option<Spanned<RawHttp>>,
    pub nats: Option<Spanned<RawNats>>,
    pub redis: Option<Spanned<RawRedis>>,
    pub manual: Option<Spanned<String>>,
}

#[derive(Deserialize)]
pub struct RawSql {
    pub target: Spanned<String>,
    pub statement: Spanned<String>,
}

#[derive(Deserialize)]
pub struct RawHttp {
    pub target: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub path: Spanned<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub body: Option<Spanned<serde_json::Value>>,
}

/// A message published to a JetStream subject.
#[derive(Deserialize)]
pub struct RawNats {
    pub target: Spanned<String>,
    pub subject: Spanned<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub body: Spanned<serde_json::Value>,
}

/// An entry appended to a Redis stream.
#[derive(Deserialize)]
pub struct RawRedis {
    pub target: Spanned<String>,
    pub stream: Spanned<String>,
    pub fields: Spanned<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
pub struct RawReplay {
    pub sql: Option<Spanned<RawSql>>,
    pub http: Option<Spanned<RawHttp>>,
    pub nats: Option<Spanned<RawNats>>,
    pub redis: Option<Spanned<RawRedis>>,
    pub idempotency_key: Option<Spanned<String>>,
    pub partition: Option<Spanned<String>>,
    pub max_window: Option<Spanned<String>>,
    pub attempts: Option<Spanned<u32>>,
    pub processed: Option<Spanned<RawSide>>,
}
