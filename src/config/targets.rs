//! `targets:` — the systems approved compensating actions may change — and `plans:` — how
//! plans are approved and how long they stay valid.
//!
//! A SQL target is its own writable connection, never a source's read-only one. An HTTP target
//! is a base URL: every action's URL must lie under it. A NATS target publishes into one
//! JetStream stream; a Redis target appends to streams with `XADD`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::secret::{expand_env, expand_secret_url};
use super::{
    SecretUrl, SourceKind, header_holds_a_secret, mysql_session_problem, resolve_sqlite_path,
};
use crate::diagnostic::Diagnostic;
use crate::domain::{HumanDuration, Severity, TargetName};

#[derive(Debug, Clone)]
pub enum TargetConfig {
    Sql(SqlTarget),
    Http(HttpTarget),
    Nats(NatsTarget),
    Redis(RedisTarget),
}

impl TargetConfig {
    pub fn name(&self) -> &TargetName {
        match self {
            TargetConfig::Sql(t) => &t.name,
            TargetConfig::Http(t) => &t.name,
            TargetConfig::Nats(t) => &t.name,
            TargetConfig::Redis(t) => &t.name,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SqlTarget {
    pub name: TargetName,
    pub kind: SourceKind,
    pub url: SecretUrl,
    pub statement_timeout: HumanDuration,
    /// The table in the target where trueup records each applied action's idempotency key,
    /// in the same transaction as the action: the proof that it happened exactly once.
    pub marker_table: String,
}

#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub name: TargetName,
    /// Ends with `/`; every action URL starts with it.
    pub base_url: String,
    /// Sent with every request (credentials come from `${ENV}` references).
    /// Header values may carry credentials (from `${ENV}` only): they never print.
    pub headers: Vec<(String, secrecy::SecretString)>,
    pub timeout: HumanDuration,
    /// Lets this target reach loopback, private, link-local and metadata addresses, which are
    /// refused by default.
    pub allow_private_network: bool,
}

/// A NATS server whose JetStream stream `stream` receives published actions.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub name: TargetName,
    /// `nats://host:4222`; credentials only from `${ENV}`.
    pub url: SecretUrl,
    /// The stream every published subject must land in: each ack is checked against it, and
    /// its duplicate window is what makes a repeated publish a no-op.
    pub stream: String,
    /// To connect, and for each publish's ack.
    pub timeout: HumanDuration,
}

/// A Redis server whose streams receive actions by `XADD`.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub name: TargetName,
    /// `redis://host:6379/0`; a password only from `${ENV}`.
    pub url: SecretUrl,
    /// The hash where trueup records each applied action's idempotency key (field) and the
    /// entry id it added (value), in the same atomic script as the `XADD`.
    pub marker_key: String,
    /// To connect, and for each answer.
    pub timeout: HumanDuration,
}

/// `plans:` in trueup.yaml.
#[derive(Debug, Clone, PartialEq)]
pub struct PlansConfig {
    /// A plan not applied within this long is stale.
    pub ttl: HumanDuration,
    /// Distinct approvers needed, by the invariant's severity.
    pub approvals: BTreeMap<Severity, u32>,
}

impl Default for PlansConfig {
    fn default() -> Self {
        Self {
            ttl: HumanDuration::from_std(std::time::Duration::from_secs(24 * 3600)),
            approvals: BTreeMap::from([
                (Severity::Critical, 2),
                (Severity::High, 1),
                (Severity::Medium, 1),
                (Severity::Low, 1),
            ]),
        }
    }
}

impl PlansConfig {
    pub fn approvals_for(&self, severity: Severity) -> u32 {
        self.approvals.get(&severity).copied().unwrap_or(1)
    }
}

pub const DEFAULT_MARKER_TABLE: &str = "trueup_applied_actions";
pub const DEFAULT_MARKER_KEY: &str = "trueup:applied_actions";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    url: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    marker_table: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    allow_private_network: bool,
    stream: Option<Spanned<String>>,
    marker_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlans {
    ttl: Option<Spanned<String>>,
    #[serde(default)]
    approvals: BTreeMap<String, Spanned<u32>>,
}

pub(super) fn parse_target(
    name: &str,
    raw: &Spanned<RawTarget>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    file: &Path,
) -> Result<TargetConfig, Diagnostic> {
    let err = |at, msg: String| Diagnostic::at(file, at, format!("targets.{name}: {msg}"));
    let name = TargetName::parse(name).map_err(|e| err(raw.referenced, e.to_string()))?;
    let t = &raw.value;
    let duration = |v: &Option<Spanned<String>>, field: &str, default_secs: u64| match v {
        Some(s) => {
            HumanDuration::parse(&s.value).map_err(|e| err(s.referenced, format!("{field}: {e}")))
        }
        None => Ok(HumanDuration::from_std(std::time::Duration::from_secs(
            default_secs,
        ))),
    };
    if let Some(url) = &t.url
        && t.base_url.is_none()
    {
        if url.value.starts_with("nats://") || url.value.starts_with("redis://") {
            let timeout = duration(&t.timeout, "timeout", 10)?;
            if timeout.as_std().is_zero() {
                let at = t.timeout.as_ref().map_or(raw.referenced, |s| s.referenced);
                return Err(err(at, "timeout: give more than 0s".into()));
            }
            return server_target(name, raw, env, timeout, file);
        }
        if ["tls://", "rediss://"]
            .iter()
            .any(|scheme| url.value.starts_with(scheme))
        {
            return Err(err(
                url.referenced,
                "TLS to NATS or Redis is not built in; use nats:// or redis:// (on a private network, or through a local TLS tunnel)".into(),
            ));
        }
    }
    if let Some(field) = [
        ("stream", t.stream.is_some()),
        ("marker_key", t.marker_key.is_some()),
    ]
    .into_iter()
    .find_map(|(f, given)| given.then_some(f))
    {
        return Err(err(
            raw.referenced,
            format!(
                "`{field}` belongs to a NATS or Redis target (`url: nats://…` or `url: redis://…`)"
            ),
        ));
    }
    match (&t.url, &t.base_url) {
        (Some(url), None) => {
            if !t.headers.is_empty() || t.timeout.is_some() || t.allow_private_network {
                return Err(err(
                    url.referenced,
                    "headers, timeout and allow_private_network belong to HTTP targets (`base_url:`); a SQL target has `url`, `statement_timeout` and `marker_table`".into(),
                ));
            }
            let expanded =
                expand_secret_url(&url.value, env).map_err(|m| err(url.referenced, m))?;
            let kind = SourceKind::of_url(expanded.expose()).ok_or_else(|| {
                err(
                    url.referenced,
                    "start the URL with postgres://, mysql:// or sqlite:// (a database), nats:// (a JetStream stream) or redis:// (Redis streams)".into(),
                )
            })?;
            if kind == SourceKind::MySql
                && let Some(problem) = mysql_session_problem(expanded.expose())
            {
                return Err(err(url.referenced, problem));
            }
            let expanded = match kind {
                SourceKind::Sqlite => expanded.map(|u| resolve_sqlite_path(u, base)),
                _ => expanded,
            };
            let marker_table = match &t.marker_table {
                Some(m) => {
                    let ok = !m.value.is_empty()
                        && m.value.len() <= 63
                        && m.value.chars().enumerate().all(|(i, c)| {
                            c.is_ascii_lowercase() || c == '_' || (i > 0 && c.is_ascii_digit())
                        });
                    if !ok {
                        return Err(err(
                            m.referenced,
                            format!(
                                "marker_table `{}` must be a plain lowercase table name (letters, digits, `_`)",
                                m.value
                            ),
                        ));
                    }
                    m.value.clone()
                }
                None => DEFAULT_MARKER_TABLE.to_owned(),
            };
            Ok(TargetConfig::Sql(SqlTarget {
                name,
                kind,
                url: expanded,
                statement_timeout: duration(&t.statement_timeout, "statement_timeout", 30)?,
                marker_table,
            }))
        }
        (None, Some(b)) => {
            if t.statement_timeout.is_some() || t.marker_table.is_some() {
                return Err(err(
                    b.referenced,
                    "statement_timeout and marker_table belong to SQL targets (`url:`)".into(),
                ));
            }
            let base_url = parse_base_url(&b.value).map_err(|m| err(b.referenced, m))?;
            let headers = parse_headers(&t.headers, env, &["idempotency-key"])
                .map_err(|(at, m)| err(at, m))?;
            Ok(TargetConfig::Http(HttpTarget {
                name,
                base_url,
                headers,
                timeout: duration(&t.timeout, "timeout", 10)?,
                allow_private_network: t.allow_private_network,
            }))
        }
        (Some(u), Some(_)) => Err(err(
            u.referenced,
            "a target is either SQL (`url:`) or HTTP (`base_url:`), not both".into(),
        )),
        (None, None) => Err(err(
            raw.referenced,
            "give `url:` (a writable database) or `base_url:` (an HTTP API)".into(),
        )),
    }
}

/// A `url: nats://…` or `url: redis://…` target.
fn server_target(
    name: TargetName,
    raw: &Spanned<RawTarget>,
    env: &dyn Fn(&str) -> Option<String>,
    timeout: HumanDuration,
    file: &Path,
) -> Result<TargetConfig, Diagnostic> {
    let err = |at, msg: String| Diagnostic::at(file, at, format!("targets.{name}: {msg}"));
    let t = &raw.value;
    let Some(url) = &t.url else {
        unreachable!("server_target is called for a target with a url");
    };
    let nats = url.value.starts_with("nats://");
    let (server, scheme, own, foreign) = if nats {
        ("NATS", "nats://", "stream", "marker_key")
    } else {
        ("Redis", "redis://", "marker_key", "stream")
    };
    let misplaced = [
        ("statement_timeout", t.statement_timeout.is_some()),
        ("marker_table", t.marker_table.is_some()),
        ("headers", !t.headers.is_empty()),
        ("allow_private_network", t.allow_private_network),
        (
            foreign,
            if nats {
                t.marker_key.is_some()
            } else {
                t.stream.is_some()
            },
        ),
    ]
    .into_iter()
    .find_map(|(f, given)| given.then_some(f));
    if let Some(field) = misplaced {
        return Err(err(
            raw.referenced,
            format!(
                "`{field}` does not belong to a {server} target, which has url, {own} and timeout"
            ),
        ));
    }
    let url =
        super::parse::server_url(url, env, server, &[scheme]).map_err(|(at, m)| err(at, m))?;
    if nats {
        let Some(stream) = &t.stream else {
            return Err(err(
                raw.referenced,
                "a NATS target needs `stream:`, the JetStream stream its subjects are published into (e.g. `stream: ORDERS`)".into(),
            ));
        };
        let ok = !stream.value.is_empty()
            && stream.value.len() <= 255
            && !stream
                .value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c));
        if !ok {
            return Err(err(
                stream.referenced,
                format!(
                    "stream `{}` is not a JetStream stream name (no spaces, `.`, `*`, `>`, `/` or `\\`)",
                    stream.value
                ),
            ));
        }
        return Ok(TargetConfig::Nats(NatsTarget {
            name,
            url,
            stream: stream.value.clone(),
            timeout,
        }));
    }
    let marker_key = match &t.marker_key {
        Some(m)
            if m.value.is_empty()
                || m.value.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            return Err(err(
                m.referenced,
                format!(
                    "marker_key `{}` must be a Redis key without spaces",
                    m.value
                ),
            ));
        }
        Some(m) => m.value.clone(),
        None => DEFAULT_MARKER_KEY.to_owned(),
    };
    Ok(TargetConfig::Redis(RedisTarget {
        name,
        url,
        marker_key,
        timeout,
    }))
}

/// Headers sent with every request: valid names, none of `reserved` (lowercase; trueup sets
/// those itself), credentials only from `${ENV}`; `Err((where, what))`.
pub(super) fn parse_headers(
    raw: &BTreeMap<String, Spanned<String>>,
    env: &dyn Fn(&str) -> Option<String>,
    reserved: &[&str],
) -> Result<Vec<(String, secrecy::SecretString)>, (serde_saphyr::Location, String)> {
    let mut headers = Vec::new();
    for (h, v) in raw {
        if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err((v.referenced, format!("header name `{h}` is not valid")));
        }
        if reserved.contains(&h.to_ascii_lowercase().as_str()) {
            return Err((
                v.referenced,
                format!("trueup sets {h} itself, one per action"),
            ));
        }
        if header_holds_a_secret(h) && !v.value.contains("${") {
            return Err((
                v.referenced,
                format!(
                    "header `{h}` carries a credential written in the file; write it from the environment, like `{h}: \"Bearer ${{BILLING_TOKEN}}\"`, and set that variable"
                ),
            ));
        }
        let value = expand_env(&v.value, env).map_err(|m| (v.referenced, m))?;
        headers.push((h.clone(), secrecy::SecretString::from(value)));
    }
    Ok(headers)
}

/// An absolute http(s) URL without credentials, query or fragment, ending in `/`.
pub(super) fn parse_base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| format!("base_url `{raw}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "base_url `{raw}` must start with http:// or https://"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "base_url must not hold credentials; send them in `headers:` from ${ENV}".into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "base_url `{raw}` must not have a query or fragment"
        ));
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

pub(super) fn parse_plans(raw: &RawPlans, file: &Path) -> Result<PlansConfig, Diagnostic> {
    let mut plans = PlansConfig::default();
    if let Some(t) = &raw.ttl {
        plans.ttl = HumanDuration::parse(&t.value)
            .map_err(|e| Diagnostic::at(file, t.referenced, format!("plans.ttl: {e}")))?;
    }
    for (severity, n) in &raw.approvals {
        let s = Severity::parse(severity).ok_or_else(|| {
            Diagnostic::at(
                file,
                n.referenced,
                format!(
                    "plans.approvals: `{severity}` is not a severity; use {}",
                    Severity::NAMES
                ),
            )
        })?;
        if n.value == 0 || n.value > 10 {
            return Err(Diagnostic::at(
                file,
                n.referenced,
                format!("plans.approvals.{severity}: between 1 and 10 distinct approvers"),
            ));
        }
        plans.approvals.insert(s, n.value);
    }
    Ok(plans)
}
