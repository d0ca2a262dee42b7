//! `event_logs:` — trueup's own logs of events. Each log is fed by one or more feeds (a
//! durable JetStream consumer, a Redis consumer group, a signed webhook on `trueup serve`) and
//! keeps every event once, by its id.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::secret::{expand_env, is_env_reference};
use super::{NatsSource, RedisSource, SourceConfig};
use crate::diagnostic::Diagnostic;
use crate::domain::{EventShape, HumanDuration, JsonPath, LogName, SourceName};

/// An event larger than this is refused unless the log says otherwise.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;
/// No log may accept events larger than this: every event is held whole while it is stored.
pub const MAX_EVENT_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// The header a webhook's signature arrives in unless the feed names another.
pub const DEFAULT_SIGNATURE_HEADER: &str = "Trueup-Signature";

/// One event log.
#[derive(Debug, Clone)]
pub struct EventLogConfig {
    pub name: LogName,
    /// Where each event's id and business time are in its JSON payload (an event seen again
    /// with the same id is a duplicate delivery, counted and not stored again), and the size
    /// over which an event is refused (and counted), never cut.
    pub shape: EventShape,
    pub feeds: Vec<LogFeed>,
    /// How long events are kept after capture (none: for ever). An event an open violation,
    /// an unfinished plan or an open incident may still need is kept longer.
    pub retain: Option<HumanDuration>,
}

impl NatsFeed {
    /// How the feed is named in the log, in metrics and in traces: `nats:SOURCE/STREAM`.
    pub fn label(&self) -> String {
        format!("nats:{}/{}", self.server.name, self.stream)
    }
}

impl RedisFeed {
    /// `redis:SOURCE/KEY`.
    pub fn label(&self) -> String {
        format!("redis:{}/{}", self.server.name, self.stream)
    }
}

impl EventLogConfig {
    pub fn webhook(&self) -> Option<&WebhookFeed> {
        self.feeds.iter().find_map(|f| match f {
            LogFeed::Webhook(w) => Some(w),
            _ => None,
        })
    }
}

/// Where events of a log come from.
#[derive(Debug, Clone)]
pub enum LogFeed {
    Nats(NatsFeed),
    Redis(RedisFeed),
    Webhook(WebhookFeed),
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStart {
    /// From the first message the stream still holds (the default: capture what is kept).
    All,
    /// From the messages published after the consumer was created.
    New,
}

/// A durable JetStream pull consumer that trueup owns and acknowledges only after commit.
#[derive(Debug, Clone)]
pub struct NatsFeed {
    /// The NATS server (a `kind: nats` source: its URL, credentials and timeout).
    pub server: NatsSource,
    pub stream: String,
    /// Only messages on this subject (wildcards allowed); none: all of the stream's.
    pub subject: Option<String>,
    /// The durable consumer's name (default `trueup-<log>`).
    pub durable: String,
    pub start: FeedStart,
    /// How long the server waits for an acknowledgement before it delivers a message again.
    pub ack_wait: HumanDuration,
    /// Messages fetched, stored and acknowledged together.
    pub batch: usize,
}

/// A Redis Streams consumer group that trueup owns; entries are acknowledged (`XACK`) only
/// after commit.
#[derive(Debug, Clone)]
pub struct RedisFeed {
    /// The Redis server (a `kind: redis` source).
    pub server: RedisSource,
    /// The stream's key.
    pub stream: String,
    /// The consumer group (default `trueup-<log>`); created if missing.
    pub group: String,
    /// The entry field that holds the event's JSON; none: the event is the entry's fields as
    /// one JSON object of strings.
    pub field: Option<String>,
    pub start: FeedStart,
    /// An entry another consumer (a replica that died) left unacknowledged this long is
    /// claimed and stored.
    pub claim_after: HumanDuration,
    pub batch: usize,
}

/// `POST /ingest/<log>` on `trueup serve`, signed with HMAC-SHA256 over `<t>.<body>`.
#[derive(Clone)]
pub struct WebhookFeed {
    pub secret: secrecy::SecretString,
    pub signature_header: String,
    /// A signature whose timestamp is further than this from now is refused (a replayed
    /// request).
    pub tolerance: HumanDuration,
}

impl std::fmt::Debug for WebhookFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookFeed")
            .field("secret", &"***")
            .field("signature_header", &self.signature_header)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEventLog {
    event_id: Option<Spanned<String>>,
    event_time: Option<Spanned<String>>,
    max_event_bytes: Option<Spanned<u64>>,
    retain: Option<Spanned<String>>,
    #[serde(default)]
    from: Vec<Spanned<RawFeed>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeed {
    nats: Option<Spanned<RawNatsFeed>>,
    redis: Option<Spanned<RawRedisFeed>>,
    webhook: Option<Spanned<RawWebhookFeed>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNatsFeed {
    source: Spanned<String>,
    stream: Spanned<String>,
    subject: Option<Spanned<String>>,
    durable: Option<Spanned<String>>,
    start: Option<Spanned<String>>,
    ack_wait: Option<Spanned<String>>,
    batch: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedisFeed {
    source: Spanned<String>,
    stream: Spanned<String>,
    group: Option<Spanned<String>>,
    field: Option<Spanned<String>>,
    start: Option<Spanned<String>>,
    claim_after: Option<Spanned<String>>,
    batch: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhookFeed {
    secret: Spanned<String>,
    signature_header: Option<Spanned<String>>,
    tolerance: Option<Spanned<String>>,
}

type Located = (serde_saphyr::Location, String);

/// `event_logs:`, each log checked against the parsed `sources`; every problem is reported.
pub(super) fn parse_logs(
    raw: &BTreeMap<String, Spanned<RawEventLog>>,
    sources: &BTreeMap<SourceName, SourceConfig>,
    env: &dyn Fn(&str) -> Option<String>,
    file: &Path,
    errors: &mut Vec<Diagnostic>,
) -> BTreeMap<LogName, EventLogConfig> {
    let mut logs = BTreeMap::new();
    let mut consumers = BTreeMap::new();
    for (name, spanned) in raw {
        match parse_log(name, spanned, sources, env, &mut consumers) {
            Ok(log) => {
                logs.insert(log.name.clone(), log);
            }
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|(at, m)| Diagnostic::at(file, at, format!("event log `{name}`: {m}"))),
            ),
        }
    }
    logs
}

fn parse_log(
    name: &str,
    spanned: &Spanned<RawEventLog>,
    sources: &BTreeMap<SourceName, SourceConfig>,
    env: &dyn Fn(&str) -> Option<String>,
    consumers: &mut BTreeMap<(String, String), String>,
) -> Result<EventLogConfig, Vec<Located>> {
    let raw = &spanned.value;
    let mut problems = Vec::new();
    let log_name = LogName::parse(name)
        .map_err(|e| problems.push((spanned.referenced, e.to_string())))
        .ok();
    let event_id = match &raw.event_id {
        None => {
            problems.push((
                spanned.referenced,
                "needs `event_id:`, where each event's id is in its JSON payload (like `event_id: id` or `event_id: data.object.id`)".into(),
            ));
            None
        }
        Some(p) => json_path(p, "event_id", &mut problems).filter(|path| {
            let whole = path.is_root();
            if whole {
                problems.push((
                    p.referenced,
                    "event_id names the whole payload; name the field that holds the id (like `id`)".into(),
                ));
            }
            !whole
        }),
    };
    let event_time = raw
        .event_time
        .as_ref()
        .and_then(|p| json_path(p, "event_time", &mut problems));
    let max_event_bytes = match &raw.max_event_bytes {
        None => DEFAULT_MAX_EVENT_BYTES,
        Some(n) if n.value == 0 || n.value > MAX_EVENT_BYTES_LIMIT as u64 => {
            problems.push((
                n.referenced,
                format!(
                    "max_event_bytes must be between 1 and {MAX_EVENT_BYTES_LIMIT} (64 MiB), not {}",
                    n.value
                ),
            ));
            DEFAULT_MAX_EVENT_BYTES
        }
        Some(n) => n.value as usize,
    };
    let retain = match &raw.retain {
        None => None,
        Some(r) => match HumanDuration::parse(&r.value) {
            Ok(d) if d.as_std() > std::time::Duration::from_secs(100 * 366 * 86_400) => {
                problems.push((
                    r.referenced,
                    format!("retain `{}` is longer than 100 years; leave `retain` out to keep events for good", r.value),
                ));
                None
            }
            Ok(d) if d.as_std() >= std::time::Duration::from_secs(3600) => Some(d),
            Ok(_) => {
                problems.push((
                    r.referenced,
                    format!("retain `{}` is shorter than 1h; keep events at least an hour (like `retain: 30d`)", r.value),
                ));
                None
            }
            Err(e) => {
                problems.push((r.referenced, format!("retain: {e}")));
                None
            }
        },
    };
    if raw.from.is_empty() {
        problems.push((
            spanned.referenced,
            "needs `from:`, one or more feeds (`nats:`, `redis:` or `webhook:`) its events come from".into(),
        ));
    }
    let mut feeds = Vec::new();
    let mut webhook_at: Option<serde_saphyr::Location> = None;
    for (i, f) in raw.from.iter().enumerate() {
        let given = [
            f.value.nats.is_some(),
            f.value.redis.is_some(),
            f.value.webhook.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            problems.push((
                f.referenced,
                format!("from[{i}] must be exactly one of `nats:`, `redis:` or `webhook:`"),
            ));
            continue;
        }
        let feed = if let Some(n) = &f.value.nats {
            nats_feed(name, n, sources).map(LogFeed::Nats)
        } else if let Some(r) = &f.value.redis {
            redis_feed(name, r, sources).map(LogFeed::Redis)
        } else if let Some(w) = &f.value.webhook {
            if let Some(first) = webhook_at {
                Err((
                    w.referenced,
                    format!(
                        "has a second `webhook:` (the first is at line {}); a log has one ingest endpoint, /ingest/{name}",
                        first.line()
                    ),
                ))
            } else {
                webhook_at = Some(w.referenced);
                webhook_feed(w, env).map(LogFeed::Webhook)
            }
        } else {
            unreachable!("one feed kind is given")
        };
        // Two feeds on one consumer would share its messages, each storing half.
        let consumer = match &feed {
            Ok(LogFeed::Nats(n)) => Some((n.label(), n.durable.clone(), "durable")),
            Ok(LogFeed::Redis(r)) => Some((r.label(), r.group.clone(), "group")),
            _ => None,
        };
        if let Some((label, consumer, field)) = consumer
            && let Some(other) =
                consumers.insert((label.clone(), consumer.clone()), name.to_owned())
        {
            problems.push((
                f.referenced,
                format!(
                    "from[{i}] reads {label} with consumer `{consumer}`, as a feed of log `{other}` does already; give one of them another `{field}:`"
                ),
            ));
            continue;
        }
        match feed {
            Ok(feed) => feeds.push(feed),
            Err(p) => problems.push(p),
        }
    }
    match (problems.is_empty(), log_name, event_id) {
        (true, Some(name), Some(event_id)) => Ok(EventLogConfig {
            name,
            shape: EventShape {
                event_id,
                event_time,
                max_event_bytes,
            },
            feeds,
            retain,
        }),
        _ => Err(problems),
    }
}

fn json_path(p: &Spanned<String>, field: &str, problems: &mut Vec<Located>) -> Option<JsonPath> {
    JsonPath::parse(&p.value)
        .map_err(|e| problems.push((p.referenced, format!("{field}: {e}"))))
        .ok()
}

fn start(raw: &Option<Spanned<String>>) -> Result<FeedStart, Located> {
    match raw {
        None => Ok(FeedStart::All),
        Some(s) => match s.value.as_str() {
            "all" => Ok(FeedStart::All),
            "new" => Ok(FeedStart::New),
            other => Err((
                s.referenced,
                format!(
                    "start is `all` (every message the stream still holds) or `new` (only those published from now on), not `{other}`"
                ),
            )),
        },
    }
}

fn duration(
    raw: &Option<Spanned<String>>,
    field: &str,
    default_secs: u64,
) -> Result<HumanDuration, Located> {
    match raw {
        None => Ok(HumanDuration::from_std(std::time::Duration::from_secs(
            default_secs,
        ))),
        Some(d) => {
            let parsed = HumanDuration::parse(&d.value)
                .map_err(|e| (d.referenced, format!("{field}: {e}")))?;
            if parsed.as_std().is_zero() {
                return Err((d.referenced, format!("{field} must be longer than 0")));
            }
            Ok(parsed)
        }
    }
}

fn batch(raw: &Option<Spanned<u32>>) -> Result<usize, Located> {
    match raw {
        None => Ok(500),
        Some(b) if b.value == 0 || b.value > 10_000 => Err((
            b.referenced,
            format!("batch must be between 1 and 10000, not {}", b.value),
        )),
        Some(b) => Ok(b.value as usize),
    }
}

/// The source a feed names, which must be a server of the right kind.
fn server<'a>(
    source: &Spanned<String>,
    sources: &'a BTreeMap<SourceName, SourceConfig>,
    kind: &str,
) -> Result<&'a SourceConfig, Located> {
    let found = SourceName::parse(&source.value)
        .ok()
        .and_then(|n| sources.get(&n));
    found.ok_or_else(|| {
        (
            source.referenced,
            format!(
                "source `{}` is not configured; add it under `sources:` with `url: {kind}://…`",
                source.value
            ),
        )
    })
}

fn nats_feed(
    log: &str,
    n: &Spanned<RawNatsFeed>,
    sources: &BTreeMap<SourceName, SourceConfig>,
) -> Result<NatsFeed, Located> {
    let raw = &n.value;
    let SourceConfig::Nats(server_cfg) = server(&raw.source, sources, "nats")? else {
        return Err((
            raw.source.referenced,
            format!(
                "source `{}` is not a NATS server; a `nats:` feed reads a `kind: nats` source",
                raw.source.value
            ),
        ));
    };
    let stream = raw.stream.value.trim();
    if stream.is_empty() || stream.contains(['.', '*', '>', ' ', '\t', '/', '\\']) {
        return Err((
            raw.stream.referenced,
            format!(
                "stream `{}` is not a JetStream stream name (no `.`, `*`, `>`, `/`, `\\` or spaces)",
                raw.stream.value
            ),
        ));
    }
    let subject = match &raw.subject {
        None => None,
        Some(s) => {
            let tokens: Vec<&str> = s.value.split('.').collect();
            let bad = tokens.iter().enumerate().find(|(i, t)| {
                t.is_empty()
                    || t.contains(char::is_whitespace)
                    || (t.contains('>') && (**t != ">" || *i + 1 != tokens.len()))
                    || (t.contains('*') && **t != "*")
            });
            if bad.is_some() {
                return Err((
                    s.referenced,
                    format!(
                        "subject `{}` is not a NATS subject filter (tokens separated by `.`, `*` for one token, `>` only last)",
                        s.value
                    ),
                ));
            }
            Some(s.value.clone())
        }
    };
    let durable = match &raw.durable {
        None => format!("trueup-{log}"),
        Some(d) => {
            if d.value.is_empty() || d.value.contains(['.', '*', '>', ' ', '\t', '/', '\\']) {
                return Err((
                    d.referenced,
                    format!(
                        "durable `{}` is not a consumer name (no `.`, `*`, `>`, `/`, `\\` or spaces)",
                        d.value
                    ),
                ));
            }
            d.value.clone()
        }
    };
    Ok(NatsFeed {
        server: server_cfg.clone(),
        stream: stream.to_owned(),
        subject,
        durable,
        start: start(&raw.start)?,
        ack_wait: duration(&raw.ack_wait, "ack_wait", 30)?,
        batch: batch(&raw.batch)?,
    })
}

fn redis_feed(
    log: &str,
    r: &Spanned<RawRedisFeed>,
    sources: &BTreeMap<SourceName, SourceConfig>,
) -> Result<RedisFeed, Located> {
    let raw = &r.value;
    let SourceConfig::Redis(server_cfg) = server(&raw.source, sources, "redis")? else {
        return Err((
            raw.source.referenced,
            format!(
                "source `{}` is not a Redis server; a `redis:` feed reads a `kind: redis` source",
                raw.source.value
            ),
        ));
    };
    if raw.stream.value.is_empty() {
        return Err((
            raw.stream.referenced,
            "stream: needs the stream's key".into(),
        ));
    }
    let group = match &raw.group {
        None => format!("trueup-{log}"),
        Some(g) if g.value.is_empty() || g.value.contains(char::is_whitespace) => {
            return Err((
                g.referenced,
                format!(
                    "group `{}` is not a consumer group name (no spaces)",
                    g.value
                ),
            ));
        }
        Some(g) => g.value.clone(),
    };
    Ok(RedisFeed {
        server: server_cfg.clone(),
        stream: raw.stream.value.clone(),
        group,
        field: raw.field.as_ref().map(|f| f.value.clone()),
        start: start(&raw.start)?,
        claim_after: duration(&raw.claim_after, "claim_after", 60)?,
        batch: batch(&raw.batch)?,
    })
}

fn webhook_feed(
    w: &Spanned<RawWebhookFeed>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<WebhookFeed, Located> {
    let raw = &w.value;
    let secret_raw = raw.secret.value.trim();
    if !is_env_reference(secret_raw) {
        return Err((
            raw.secret.referenced,
            "the webhook secret is written in the file; write `secret: ${ORDERS_WEBHOOK_SECRET}` and set that environment variable".into(),
        ));
    }
    let secret = expand_env(secret_raw, env).map_err(|m| (raw.secret.referenced, m))?;
    if secret.len() < 16 {
        return Err((
            raw.secret.referenced,
            format!(
                "the webhook secret from {secret_raw} has {} bytes; use at least 16 random bytes (like `openssl rand -hex 32`)",
                secret.len()
            ),
        ));
    }
    let signature_header = match &raw.signature_header {
        None => DEFAULT_SIGNATURE_HEADER.to_owned(),
        Some(h) => {
            if axum::http::HeaderName::from_bytes(h.value.as_bytes()).is_err() {
                return Err((
                    h.referenced,
                    format!("signature_header `{}` is not an HTTP header name", h.value),
                ));
            }
            h.value.clone()
        }
    };
    Ok(WebhookFeed {
        secret: secrecy::SecretString::from(secret),
        signature_header,
        tolerance: duration(&raw.tolerance, "tolerance", 300)?,
    })
}
