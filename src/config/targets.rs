//! `targets:` — the systems approved compensating actions may change — and `plans:` — how
//! plans are approved and how long they stay valid.
//!
//! A SQL target is its own writable connection, never a source's read-only one. An HTTP target
//! is a base URL: every action's URL must lie under it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::secret::{expand_env, expand_secret_url};
use super::{SecretUrl, SourceKind, header_holds_a_secret, resolve_sqlite_path};
use crate::diagnostic::Diagnostic;
use crate::domain::{HumanDuration, Severity, TargetName};

#[derive(Debug, Clone)]
pub enum TargetConfig {
    Sql(SqlTarget),
    Http(HttpTarget),
}

impl TargetConfig {
    pub fn name(&self) -> &TargetName {
        match self {
            TargetConfig::Sql(t) => &t.name,
            TargetConfig::Http(t) => &t.name,
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
                    "start the URL with postgres://, mysql:// or sqlite://".into(),
                )
            })?;
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
