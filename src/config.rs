//! `trueup.yaml`: where trueup keeps its ledger, which databases it reads, where the invariant
//! files are. Layers: built-in defaults, then the file, then `TRUEUP_*` environment variables.
//! Credentials only arrive through `${ENV_VAR}` references and never print.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::domain::{HumanDuration, Role, SourceName, TargetName};

mod targets;
pub use targets::{DEFAULT_MARKER_TABLE, HttpTarget, PlansConfig, SqlTarget, TargetConfig};

pub const DEFAULT_STORE: &str = "sqlite://trueup.db";
pub const DEFAULT_INVARIANTS_DIR: &str = "invariants";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    pub store: SecretUrl,
    pub invariants_dir: PathBuf,
    pub sources: BTreeMap<SourceName, SourceConfig>,
    pub serve: ServeConfig,
    /// Where alert notifications go, by channel name.
    pub channels: BTreeMap<String, ChannelConfig>,
    /// What approved compensating actions may change.
    pub targets: BTreeMap<TargetName, TargetConfig>,
    pub plans: PlansConfig,
}

/// One notification channel.
#[derive(Debug, Clone)]
pub enum ChannelConfig {
    Email(EmailChannel),
    Webhook(WebhookChannel),
}

#[derive(Debug, Clone)]
pub struct EmailChannel {
    /// `smtp://host:port` (plain, for local relays), `smtp+starttls://host:port` or
    /// `smtps://host:port` (TLS from the start).
    pub smtp: String,
    pub username: Option<String>,
    pub password: Option<secrecy::SecretString>,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// trueup's documented JSON payload.
    Json,
    /// `{"text": "..."}`, which Slack, Mattermost and Rocket.Chat incoming webhooks accept.
    Slack,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookChannel {
    pub url: SecretUrl,
    pub format: WebhookFormat,
}

/// `serve:` — how `trueup serve` listens and bounds its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub listen: std::net::SocketAddr,
    /// A run longer than this is stopped and recorded as failed.
    pub run_timeout: HumanDuration,
    /// On shutdown, how long runs in flight may take before they are cancelled.
    pub shutdown_grace: HumanDuration,
    /// Who may call the API, and as what.
    pub tokens: Vec<ApiToken>,
    /// How long a replica holds a claimed tick without renewing it; when a replica dies,
    /// another takes its tick over after this.
    pub lease: HumanDuration,
}

/// A bearer token the API accepts: only its SHA-256 is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The identity recorded in the audit log.
    pub name: String,
    pub role: Role,
    pub sha256: [u8; 32],
}

impl ApiToken {
    pub fn digest(token: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(token.as_bytes()).into()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("sha256", &"***")
            .finish()
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            run_timeout: HumanDuration::from_std(std::time::Duration::from_secs(300)),
            shutdown_grace: HumanDuration::from_std(std::time::Duration::from_secs(30)),
            tokens: Vec::new(),
            lease: HumanDuration::from_std(std::time::Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Postgres,
    MySql,
    Sqlite,
}

impl SourceKind {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "postgres" | "postgresql" => Some(SourceKind::Postgres),
            "mysql" | "mariadb" => Some(SourceKind::MySql),
            "sqlite" => Some(SourceKind::Sqlite),
            _ => None,
        }
    }

    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0;
        Self::parse(scheme)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Postgres => "postgres",
            SourceKind::MySql => "mysql",
            SourceKind::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when a source's database role could write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritablePolicy {
    /// Log a loud warning and go on (trueup's own guards still hold).
    #[default]
    Warn,
    /// Refuse to use the source.
    Refuse,
}

/// What to do when a source's database role is privileged (superuser, server programs or
/// files): powers no read-only transaction contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrivilegedPolicy {
    /// Refuse to use the source (the default).
    #[default]
    Refuse,
    /// `allow_privileged_role: true`: use it, with a loud warning at every start and
    /// `trueup_source_privileged_role` at 1.
    Allow,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: SourceName,
    pub kind: SourceKind,
    pub url: SecretUrl,
    pub pool_size: u32,
    pub statement_timeout: HumanDuration,
    pub on_writable: WritablePolicy,
    pub on_privileged: PrivilegedPolicy,
}

/// A database URL whose password never appears in Debug or Display output.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: String,
    /// What each `${VAR}` in the URL as written expanded to, and the variable's name: shown
    /// as the reference wherever it ends up in the URL, a password or not.
    expanded: Vec<(String, String)>,
}

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            expanded: Vec::new(),
        }
    }

    /// The real URL, for connecting. Never log it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The same URL changed by `f` (a relative path resolved, say), hiding what it hid.
    pub fn map(self, f: impl FnOnce(&str) -> String) -> Self {
        Self {
            url: f(&self.url),
            expanded: self.expanded,
        }
    }

    /// The URL with its secrets replaced: each value an environment variable gave it by the
    /// `${VAR}` reference, then the userinfo password and the value of every query parameter
    /// whose name says it holds a secret by `***`.
    pub fn redacted(&self) -> String {
        // Without `scheme://` there is no telling where a password would be: show none of it.
        if !self.url.contains("://") && !self.url.starts_with("sqlite:") {
            return "(a URL that does not start with scheme://, not shown)".to_owned();
        }
        let mut out = self.url.clone();
        let mut expanded: Vec<&(String, String)> = self
            .expanded
            .iter()
            .filter(|(v, _)| !v.is_empty())
            .collect();
        // The longest first, so that a value inside another is not half replaced.
        expanded.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        for (value, name) in expanded {
            out = out.replace(value.as_str(), &format!("${{{name}}}"));
        }
        // Right to left, so the earlier ranges stay where they are.
        for (start, end) in secret_ranges(&out).into_iter().rev() {
            out.replace_range(start..end, "***");
        }
        out
    }
}

/// Whether a URL query parameter of this name carries a credential (`sslkey=`, `passfile=`
/// and the like name files, not secrets).
pub(crate) fn names_a_secret(name: &str) -> bool {
    [
        "password",
        "passwd",
        "pwd",
        "pass",
        "sslpassword",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "auth_token",
        "api_key",
        "apikey",
        "key",
        "sig",
        "signature",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s))
}

/// Whether an HTTP header of this name carries a credential.
pub(crate) fn header_holds_a_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || [
        "token",
        "secret",
        "api-key",
        "apikey",
        "password",
        "signature",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// Byte ranges of the values of query parameters that name a secret (`password=`,
/// `sslpassword=`, `token=`, ...), in order.
fn query_secret_ranges(url: &str) -> Vec<(usize, usize)> {
    let Some(q) = url.find('?') else {
        return Vec::new();
    };
    let end = url[q..].find('#').map_or(url.len(), |i| q + i);
    let mut ranges = Vec::new();
    let mut at = q + 1;
    for pair in url[q + 1..end].split('&') {
        if let Some(eq) = pair.find('=') {
            let name = percent_encoding::percent_decode_str(&pair[..eq]).decode_utf8_lossy();
            if names_a_secret(&name) && eq + 1 < pair.len() {
                ranges.push((at + eq + 1, at + pair.len()));
            }
        }
        at += pair.len() + 1;
    }
    ranges
}

/// Every secret's byte range in a URL: the userinfo password, then secret query values.
fn secret_ranges(url: &str) -> Vec<(usize, usize)> {
    userinfo_password_range(url)
        .into_iter()
        .chain(query_secret_ranges(url))
        .collect()
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Byte range of the password in `scheme://user:password@host/...`, if there is one.
fn userinfo_password_range(url: &str) -> Option<(usize, usize)> {
    let authority_start = url.find("://")? + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some((authority_start + colon + 1, authority_start + at))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: Option<Spanned<String>>,
    invariants: Option<Spanned<String>>,
    #[serde(default)]
    sources: BTreeMap<String, Spanned<RawSource>>,
    serve: Option<RawServe>,
    notifications: Option<RawNotifications>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<targets::RawTarget>>,
    plans: Option<targets::RawPlans>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    #[serde(default)]
    channels: BTreeMap<String, Spanned<RawChannel>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    email: Option<RawEmail>,
    webhook: Option<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    smtp: Spanned<String>,
    username: Option<String>,
    password: Option<Spanned<String>>,
    from: Spanned<String>,
    to: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    listen: Option<Spanned<String>>,
    run_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    lease: Option<Spanned<String>>,
    #[serde(default)]
    tokens: Vec<Spanned<RawToken>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Spanned<String>,
    role: Spanned<String>,
    /// `${ENV_VAR}` holding the token.
    token: Option<Spanned<String>>,
    /// The token's SHA-256, in hex.
    sha256: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Option<Spanned<String>>,
    url: Spanned<String>,
    pool_size: Option<Spanned<u32>>,
    statement_timeout: Option<Spanned<String>>,
    on_writable: Option<Spanned<String>>,
    allow_privileged_role: Option<bool>,
}

impl Config {
    /// Defaults only: the embedded SQLite store in the working directory.
    pub fn defaults(base_dir: &Path) -> Self {
        Self {
            file: None,
            store: SecretUrl::new(resolve_sqlite_path(DEFAULT_STORE, base_dir)),
            invariants_dir: base_dir.join(DEFAULT_INVARIANTS_DIR),
            sources: BTreeMap::new(),
            serve: ServeConfig::default(),
            channels: BTreeMap::new(),
            targets: BTreeMap::new(),
            plans: PlansConfig::default(),
        }
    }

    /// Reads `path`, then applies `TRUEUP_STORE` / `TRUEUP_INVARIANTS` from the environment.
    pub fn load(path: &Path) -> Result<Self, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic::new(
                path,
                0,
                0,
                format!("cannot read the config file: {e}"),
            )])
        })?;
        let mut config = Self::parse(&text, path, &|name| std::env::var(name).ok())?;
        config.apply_env_overrides(&|name| std::env::var(name).ok());
        Ok(config)
    }

    /// Finds the config the way the CLI does: an explicit path, else `./trueup.yaml` if it
    /// exists, else defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Self, Diagnostics> {
        match explicit {
            Some(p) => Self::load(p),
            None => {
                let here = Path::new("trueup.yaml");
                if here.exists() {
                    Self::load(here)
                } else {
                    let mut c = Self::defaults(Path::new("."));
                    c.apply_env_overrides(&|name| std::env::var(name).ok());
                    Ok(c)
                }
            }
        }
    }

    fn apply_env_overrides(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        let base = self.base_dir();
        if let Some(store) = env("TRUEUP_STORE") {
            self.store = SecretUrl::new(resolve_sqlite_path(&store, &base));
        }
        if let Some(dir) = env("TRUEUP_INVARIANTS") {
            self.invariants_dir = base.join(dir);
        }
    }

    pub fn base_dir(&self) -> PathBuf {
        self.file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Parses config text. `env` resolves `${VAR}` references. Every problem is reported.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Diagnostics> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig {
                store: None,
                invariants: None,
                sources: BTreeMap::new(),
                serve: None,
                notifications: None,
                targets: BTreeMap::new(),
                plans: None,
            }
        } else {
            crate::yaml::from_str(text)
                .map_err(|e| Diagnostics(vec![Diagnostic::from_yaml(path, &e)]))?
        };
        let base = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut errors = Vec::new();

        let store = match &raw.store {
            Some(s) => match expand_secret_url(&s.value, env) {
                Ok(url) => {
                    if SourceKind::of_url(url.expose()).is_none_or(|k| k == SourceKind::MySql) {
                        errors.push(Diagnostic::at(
                            path,
                            s.referenced,
                            format!(
                                "store `{url}` is neither sqlite:// nor postgres://; trueup keeps its ledger in SQLite (default `{DEFAULT_STORE}`) or PostgreSQL"
                            ),
                        ));
                    }
                    url.map(|u| resolve_sqlite_path(u, &base))
                }
                Err(msg) => {
                    errors.push(Diagnostic::at(path, s.referenced, format!("store: {msg}")));
                    SecretUrl::new(String::new())
                }
            },
            None => SecretUrl::new(resolve_sqlite_path(DEFAULT_STORE, &base)),
        };
        let invariants_dir = base.join(
            raw.invariants
                .as_ref()
                .map(|s| s.value.as_str())
                .unwrap_or(DEFAULT_INVARIANTS_DIR),
        );

        let mut sources = BTreeMap::new();
        for (name, spanned) in &raw.sources {
            let at = spanned.referenced;
            let src = &spanned.value;
            let name = match SourceName::parse(name) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(Diagnostic::at(path, at, format!("sources: {e}")));
                    continue;
                }
            };
            let url = match expand_secret_url(&src.url.value, env) {
                Ok(u) => u,
                Err(msg) => {
                    errors.push(Diagnostic::at(
                        path,
                        src.url.referenced,
                        format!("source `{name}`: {msg}"),
                    ));
                    continue;
                }
            };
            let url_kind = SourceKind::of_url(url.expose());
            let kind = match (&src.kind, url_kind) {
                (Some(k), _) => match SourceKind::parse(&k.value) {
                    Some(kind) if url_kind.is_some_and(|u| u != kind) => {
                        errors.push(Diagnostic::at(
                            path,
                            k.referenced,
                            format!(
                                "source `{name}`: kind is `{kind}` but its URL is a {} URL; make them agree",
                                url_kind.map_or("different", SourceKind::as_str)
                            ),
                        ));
                        continue;
                    }
                    Some(kind) => kind,
                    None => {
                        errors.push(Diagnostic::at(
                            path,
                            k.referenced,
                            format!(
                                "source `{name}`: kind `{}` is unknown; use postgres, mysql or sqlite",
                                k.value
                            ),
                        ));
                        continue;
                    }
                },
                (None, Some(k)) => k,
                (None, None) => {
                    errors.push(Diagnostic::at(
                        path,
                        src.url.referenced,
                        format!(
                            "source `{name}`: cannot tell the database from URL `{}`; start it with postgres://, mysql:// or sqlite://",
                            // As written: `${VAR}` references, never their values.
                            src.url.value
                        ),
                    ));
                    continue;
                }
            };
            let statement_timeout = match &src.statement_timeout {
                Some(t) => match HumanDuration::parse(&t.value) {
                    Ok(d) => d,
                    Err(e) => {
                        errors.push(Diagnostic::at(
                            path,
                            t.referenced,
                            format!("source `{name}`: statement_timeout: {e}"),
                        ));
                        continue;
                    }
                },
                None => HumanDuration::from_std(std::time::Duration::from_secs(60)),
            };
            let on_writable = match src.on_writable.as_ref().map(|w| (w.value.as_str(), w)) {
                None | Some(("warn", _)) => WritablePolicy::Warn,
                Some(("refuse", _)) => WritablePolicy::Refuse,
                Some((other, w)) => {
                    errors.push(Diagnostic::at(
                        path,
                        w.referenced,
                        format!(
                            "source `{name}`: on_writable `{other}` is unknown; use warn or refuse"
                        ),
                    ));
                    continue;
                }
            };
            let pool_size = match &src.pool_size {
                Some(p) if p.value == 0 || p.value > 64 => {
                    errors.push(Diagnostic::at(
                        path,
                        p.referenced,
                        format!("source `{name}`: pool_size must be between 1 and 64"),
                    ));
                    continue;
                }
                Some(p) => p.value,
                None => 4,
            };
            let url = match kind {
                SourceKind::Sqlite => url.map(|u| resolve_sqlite_path(u, &base)),
                _ => url,
            };
            sources.insert(
                name.clone(),
                SourceConfig {
                    name,
                    kind,
                    url,
                    pool_size,
                    statement_timeout,
                    on_writable,
                    on_privileged: match src.allow_privileged_role {
                        Some(true) => PrivilegedPolicy::Allow,
                        Some(false) | None => PrivilegedPolicy::Refuse,
                    },
                },
            );
        }

        let mut serve = ServeConfig::default();
        if let Some(raw_serve) = &raw.serve {
            if let Some(l) = &raw_serve.listen {
                match l.value.parse() {
                    Ok(addr) => serve.listen = addr,
                    Err(_) => errors.push(Diagnostic::at(
                        path,
                        l.referenced,
                        format!(
                            "serve.listen: `{}` is not an address; write host:port with an IP, e.g. `127.0.0.1:8080` or `0.0.0.0:8080`",
                            l.value
                        ),
                    )),
                }
            }
            for t in &raw_serve.tokens {
                match parse_token(&t.value, env) {
                    Ok(token) => {
                        if serve
                            .tokens
                            .iter()
                            .any(|o| o.name == token.name || o.sha256 == token.sha256)
                        {
                            errors.push(Diagnostic::at(
                                path,
                                t.referenced,
                                format!("serve.tokens: `{}` repeats another token's name or value; each identity needs its own token", token.name),
                            ));
                        } else {
                            serve.tokens.push(token);
                        }
                    }
                    Err((at, msg)) => {
                        errors.push(Diagnostic::at(path, at, format!("serve.tokens: {msg}")))
                    }
                }
            }
            for (field, raw_value, slot) in [
                (
                    "run_timeout",
                    &raw_serve.run_timeout,
                    &mut serve.run_timeout,
                ),
                (
                    "shutdown_grace",
                    &raw_serve.shutdown_grace,
                    &mut serve.shutdown_grace,
                ),
                ("lease", &raw_serve.lease, &mut serve.lease),
            ] {
                if let Some(v) = raw_value {
                    match HumanDuration::parse(&v.value) {
                        Ok(d) => *slot = d,
                        Err(e) => errors.push(Diagnostic::at(
                            path,
                            v.referenced,
                            format!("serve.{field}: {e}"),
                        )),
                    }
                }
            }
        }

        let mut channels = BTreeMap::new();
        for (name, raw) in raw.notifications.iter().flat_map(|n| &n.channels) {
            match parse_channel(name, &raw.value, env) {
                Ok(c) => {
                    channels.insert(name.clone(), c);
                }
                Err((at, msg)) => errors.push(Diagnostic::at(
                    path,
                    at.unwrap_or(raw.referenced),
                    format!("notifications.channels.{name}: {msg}"),
                )),
            }
        }

        let mut targets = BTreeMap::new();
        for (name, raw_target) in &raw.targets {
            match targets::parse_target(name, raw_target, &base, env, path) {
                Ok(t) => {
                    targets.insert(t.name().clone(), t);
                }
                Err(d) => errors.push(d),
            }
        }
        let plans = match &raw.plans {
            Some(p) => targets::parse_plans(p, path).unwrap_or_else(|d| {
                errors.push(d);
                PlansConfig::default()
            }),
            None => PlansConfig::default(),
        };

        if errors.is_empty() {
            Ok(Config {
                file: Some(path.to_owned()),
                store,
                invariants_dir,
                sources,
                serve,
                channels,
                targets,
                plans,
            })
        } else {
            Err(Diagnostics(errors))
        }
    }
}

fn parse_channel(
    name: &str,
    raw: &RawChannel,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ChannelConfig, (Option<serde_saphyr::Location>, String)> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err((
            None,
            "channel names use letters, digits, `-` and `_`".into(),
        ));
    }
    match (&raw.email, &raw.webhook) {
        (Some(e), None) => {
            let scheme_ok = ["smtp://", "smtp+starttls://", "smtps://"]
                .iter()
                .any(|p| e.smtp.value.starts_with(p));
            if !scheme_ok {
                return Err((
                    Some(e.smtp.referenced),
                    format!(
                        "smtp `{}` must start with smtp:// (plain), smtp+starttls:// or smtps://",
                        e.smtp.value
                    ),
                ));
            }
            if !e.from.value.contains('@') {
                return Err((
                    Some(e.from.referenced),
                    format!("from `{}` is not an email address", e.from.value),
                ));
            }
            if e.to.is_empty() || e.to.iter().any(|t| !t.contains('@')) {
                return Err((
                    Some(e.smtp.referenced),
                    "`to` needs one or more email addresses".into(),
                ));
            }
            let password = match &e.password {
                None => None,
                Some(p) => {
                    let v = p.value.trim();
                    if !(v.starts_with("${") && v.ends_with('}')) {
                        return Err((Some(p.referenced), "the SMTP password is written in the file; write `password: ${SMTP_PASSWORD}` and set that environment variable".into()));
                    }
                    Some(secrecy::SecretString::from(
                        expand_env(v, env).map_err(|m| (Some(p.referenced), m))?,
                    ))
                }
            };
            Ok(ChannelConfig::Email(EmailChannel {
                smtp: e.smtp.value.clone(),
                username: e.username.clone(),
                password,
                from: e.from.value.clone(),
                to: e.to.clone(),
            }))
        }
        (None, Some(w)) => {
            let url =
                expand_secret_url(&w.url.value, env).map_err(|m| (Some(w.url.referenced), m))?;
            if !(url.expose().starts_with("http://") || url.expose().starts_with("https://")) {
                return Err((
                    Some(w.url.referenced),
                    "the webhook url must start with http:// or https://".into(),
                ));
            }
            let format = match w.format.as_ref().map(|f| (f.value.as_str(), f.referenced)) {
                None | Some(("json", _)) => WebhookFormat::Json,
                Some(("slack", _)) => WebhookFormat::Slack,
                Some((other, at)) => {
                    return Err((
                        Some(at),
                        format!("format `{other}` is unknown; use json or slack"),
                    ));
                }
            };
            Ok(ChannelConfig::Webhook(WebhookChannel { url, format }))
        }
        _ => Err((
            None,
            "a channel is exactly one of `email:` or `webhook:`".into(),
        )),
    }
}

fn parse_token(
    raw: &RawToken,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ApiToken, (serde_saphyr::Location, String)> {
    let name = raw.name.value.trim();
    if name.is_empty() {
        return Err((
            raw.name.referenced,
            "a token needs a `name` (the identity in the audit log)".into(),
        ));
    }
    let role = Role::parse(&raw.role.value).ok_or_else(|| {
        (
            raw.role.referenced,
            format!("role `{}` is unknown; use {}", raw.role.value, Role::NAMES),
        )
    })?;
    let sha256 = match (&raw.token, &raw.sha256) {
        (Some(t), None) => {
            let v = t.value.trim();
            let is_reference = v.starts_with("${") && v.ends_with('}') && v.len() > 3;
            if !is_reference {
                return Err((
                    t.referenced,
                    format!(
                        "token `{name}` is written in the file; write `token: ${{TRUEUP_TOKEN_{}}}` and set that environment variable, or give its `sha256`",
                        name.to_uppercase()
                            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                    ),
                ));
            }
            let value = expand_env(v, env).map_err(|m| (t.referenced, m))?;
            if value.len() < 16 {
                return Err((
                    t.referenced,
                    format!(
                        "token `{name}` is shorter than 16 characters; use a long random value (e.g. `openssl rand -hex 32`)"
                    ),
                ));
            }
            ApiToken::digest(&value)
        }
        (None, Some(h)) => {
            let bytes = hex::decode(h.value.trim()).ok().filter(|b| b.len() == 32).ok_or_else(|| {
                (h.referenced, format!("sha256 of token `{name}` must be 64 hex digits (`printf %s \"$TOKEN\" | sha256sum`)"))
            })?;
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes);
            out
        }
        _ => {
            return Err((
                raw.name.referenced,
                format!(
                    "token `{name}` needs exactly one of `token: ${{ENV_VAR}}` or `sha256: <hex>`"
                ),
            ));
        }
    };
    Ok(ApiToken {
        name: name.to_owned(),
        role,
        sha256,
    })
}

/// Whether `value` is one whole `${VAR}` reference.
fn is_env_reference(value: &str) -> bool {
    value.len() > 3
        && value.starts_with("${")
        && value.ends_with('}')
        && value[2..value.len() - 1]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces `${VAR}` references, and refuses a password written literally in the file, in the
/// userinfo or in a query parameter.
fn expand_secret_url(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<SecretUrl, String> {
    if let Some((start, end)) = userinfo_password_range(raw)
        && !is_env_reference(&raw[start..end])
    {
        return Err(
            "the URL has a password written in the file; write it as a reference like `postgres://user:${DB_PASSWORD}@host/db` and set that environment variable".into(),
        );
    }
    for (start, end) in query_secret_ranges(raw) {
        if !is_env_reference(&raw[start..end]) {
            let name_start = raw[..start - 1].rfind(['?', '&']).map_or(0, |i| i + 1);
            let name = &raw[name_start..start - 1];
            return Err(format!(
                "the URL's query has `{name}=` written in the file; write it as a reference like `{name}=${{DB_PASSWORD}}` (or put the password in the URL as `user:${{DB_PASSWORD}}@`) and set that environment variable"
            ));
        }
    }
    let mut expanded = Vec::new();
    let url = expand_each(raw, env, &mut expanded)?;
    Ok(SecretUrl { url, expanded })
}

/// Replaces `${VAR}` references with their values from `env`.
fn expand_env(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_each(raw, env, &mut Vec::new())
}

/// [`expand_env`], noting each value and its variable's name in `expanded`.
fn expand_each(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
    expanded: &mut Vec<(String, String)>,
) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in `{raw}`"))?;
        let name = &after[..end];
        let value = env(name).ok_or_else(|| {
            format!("environment variable `{name}` is not set; export it before starting trueup")
        })?;
        out.push_str(&value);
        expanded.push((value, name.to_owned()));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Makes a relative SQLite path relative to `base` (the config file's folder), so a config
/// works from any working directory.
pub fn resolve_sqlite_path(url: &str, base: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_owned();
    };
    let (file, query) = match rest.split_once('?') {
        Some((f, q)) => (f, Some(q)),
        None => (rest, None),
    };
    if file.is_empty()
        || file == ":memory:"
        || Path::new(file).is_absolute()
        || base == Path::new(".")
    {
        return url.to_owned();
    }
    let joined = base.join(file);
    match query {
        Some(q) => format!("sqlite://{}?{q}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "LEDGER_PASSWORD" => Some("s3cret".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, Diagnostics> {
        Config::parse(text, Path::new("conf/trueup.yaml"), &env)
    }

    #[test]
    fn an_empty_file_gives_the_embedded_sqlite_store() {
        let c = parse("").unwrap();
        assert_eq!(c.store.expose(), "sqlite://conf/trueup.db");
        assert_eq!(c.invariants_dir, Path::new("conf/invariants"));
    }

    #[test]
    fn passwords_come_from_the_environment_and_never_print() {
        let c = parse(
            "sources:\n  ledger:\n    url: postgres://app:${LEDGER_PASSWORD}@db:5432/ledger\n",
        )
        .unwrap();
        let src = &c.sources[&SourceName::parse("ledger").unwrap()];
        assert_eq!(src.url.expose(), "postgres://app:s3cret@db:5432/ledger");
        assert_eq!(src.kind, SourceKind::Postgres);
        let shown = format!("{c:?} {}", src.url);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgres://app:***@db:5432/ledger"),
            "{shown}"
        );
    }

    #[test]
    fn a_variable_anywhere_in_a_url_shows_as_its_reference_never_its_value() {
        // Found by fuzzing: the userinfo split at the first `@` left a second `user:${VAR}@`
        // in the query, where no `name=` said it was a secret.
        let c = parse(
            "sources:\n  ledger:\n    url: postgres://app:${LEDGER_PASSWORD}@db/ledger?x:${LEDGER_PASSWORD}@db&application_name=${LEDGER_PASSWORD}\n",
        )
        .unwrap();
        let src = &c.sources[&SourceName::parse("ledger").unwrap()];
        let shown = format!("{c:?} {}", src.url);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains(
                "postgres://app:***@db/ledger?x:${LEDGER_PASSWORD}@db&application_name=${LEDGER_PASSWORD}"
            ),
            "{shown}"
        );
    }

    #[test]
    fn a_password_in_the_query_comes_from_the_environment_and_never_prints() {
        let c = parse(
            "store: postgres://app@db/trueup?sslmode=require&password=${LEDGER_PASSWORD}\nsources:\n  ledger:\n    url: mysql://app@db/ledger?ssl-mode=REQUIRED&sslpassword=${LEDGER_PASSWORD}&token=${LEDGER_PASSWORD}#x\n",
        )
        .unwrap();
        assert_eq!(
            c.store.expose(),
            "postgres://app@db/trueup?sslmode=require&password=s3cret"
        );
        let src = &c.sources[&SourceName::parse("ledger").unwrap()];
        let shown = format!("{c:?} {} {}", src.url, c.store);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgres://app@db/trueup?sslmode=require&password=***"),
            "{shown}"
        );
        assert!(
            shown.contains("mysql://app@db/ledger?ssl-mode=REQUIRED&sslpassword=***&token=***#x"),
            "{shown}"
        );
    }

    #[test]
    fn query_parameters_that_name_files_or_settings_are_not_secrets() {
        let c = parse(
            "sources:\n  ledger:\n    url: \"postgres://app:${LEDGER_PASSWORD}@db/l?sslmode=verify-full&sslkey=/etc/k.pem&sslcert=/etc/c.pem&target_session_attrs=read-write\"\n",
        )
        .unwrap();
        let src = &c.sources[&SourceName::parse("ledger").unwrap()];
        assert!(
            src.url
                .redacted()
                .contains("sslkey=/etc/k.pem&sslcert=/etc/c.pem")
        );
    }

    #[test]
    fn a_malformed_url_never_shows_the_password_it_was_given() {
        // Found by fuzzing `config_file`: no `://`, so no userinfo to redact.
        let err = parse("sources:\n  shop:\n    url: \"pg/:x/u:${LEDGER_PASSWORD}@db/shop\"\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("${LEDGER_PASSWORD}"), "{err}");
        let shown = SecretUrl::new("postgres:u:s3cret@db/x").to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_literal_password_in_the_query_is_refused_with_the_line_and_the_fix() {
        for (url, name) in [
            ("postgres://app@db/ledger?password=hunter2", "password"),
            (
                "postgres://app@db/ledger?sslmode=disable&sslpassword=hunter2",
                "sslpassword",
            ),
            ("mysql://app@db/ledger?Password=hunter2&x=1", "Password"),
        ] {
            let err = parse(&format!("sources:\n  ledger:\n    url: \"{url}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("conf/trueup.yaml:3:"), "{err}");
            assert!(
                err.contains(&format!("`{name}=` written in the file")),
                "{err}"
            );
            assert!(err.contains("${DB_PASSWORD}"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = parse("store: postgres://app@db/t?password=hunter2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`password=` written in the file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_literal_password_is_refused_with_the_line_and_the_fix() {
        let err = parse("sources:\n  ledger:\n    url: postgres://app:hunter2@db/ledger\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("conf/trueup.yaml:3:"), "{err}");
        assert!(err.contains("${DB_PASSWORD}"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_missing_environment_variable_is_named() {
        let err = parse("store: postgres://u:${NOPE}@h/db\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`NOPE` is not set"), "{err}");
    }

    #[test]
    fn every_source_problem_is_reported_at_once() {
        let err = parse(
            "sources:\n  a:\n    url: oracle://x\n  b:\n    url: postgres://h/db\n    statement_timeout: soon\n  c:\n    kind: mysql\n    url: postgres://h/db\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn serve_settings_have_defaults_and_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.serve, ServeConfig::default());
        let c = parse("serve:\n  listen: 0.0.0.0:9000\n  run_timeout: 90s\n").unwrap();
        assert_eq!(c.serve.listen.port(), 9000);
        assert_eq!(c.serve.run_timeout.as_std().as_secs(), 90);
        let err = parse("serve:\n  listen: localhost\n  shutdown_grace: never\n").unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn api_tokens_come_from_the_environment_or_as_hashes_never_literally() {
        let env = |name: &str| match name {
            "ALICE" => Some("alice-token-0123456789".to_owned()),
            _ => None,
        };
        let hash = hex::encode(ApiToken::digest("bob-token-0123456789"));
        let c = Config::parse(
            &format!("serve:\n  tokens:\n    - {{name: alice, role: approver, token: \"${{ALICE}}\"}}\n    - {{name: bob, role: viewer, sha256: {hash}}}\n"),
            Path::new("t.yaml"),
            &env,
        )
        .unwrap();
        assert_eq!(c.serve.tokens.len(), 2);
        assert_eq!(
            c.serve.tokens[0].sha256,
            ApiToken::digest("alice-token-0123456789")
        );
        assert_eq!(c.serve.tokens[1].role, Role::Viewer);
        assert!(!format!("{c:?}").contains(&hash));
        let err = Config::parse(
            "serve:\n  tokens:\n    - {name: eve, role: admin, token: hunter2hunter2hunter2}\n    - {name: mal, role: god, sha256: abc}\n",
            Path::new("t.yaml"),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("written in the file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("viewer, operator, approver or admin"), "{err}");
    }

    #[test]
    fn notification_channels_are_parsed_and_checked() {
        let c = parse(
            "notifications:\n  channels:\n    oncall:\n      email: {smtp: \"smtp://127.0.0.1:2525\", from: trueup@example.com, to: [oncall@example.com]}\n    ops:\n      webhook: {url: \"http://127.0.0.1:9/hook\", format: slack}\n",
        )
        .unwrap();
        assert_eq!(c.channels.len(), 2);
        assert!(
            matches!(&c.channels["ops"], ChannelConfig::Webhook(w) if w.format == WebhookFormat::Slack)
        );
        let err = parse(
            "notifications:\n  channels:\n    a:\n      email: {smtp: \"mail:25\", from: x@y, to: [z@w]}\n    b:\n      webhook: {url: ftp://x}\n    c:\n      email: {smtp: \"smtp://h:25\", from: x@y, to: [z@w], password: hunter2}\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn a_key_given_twice_is_named_with_its_line_in_our_words() {
        let err = parse("store: sqlite://a.db\nstore: sqlite://b.db\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("conf/trueup.yaml:2:")
                && err.contains("`store` is given twice in the same mapping; keep one"),
            "{err}"
        );
        assert!(!err.contains("DuplicateKeyPolicy"), "{err}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = parse("stor: sqlite://x.db\n").unwrap_err().to_string();
        assert!(err.contains("stor"), "{err}");
    }

    #[test]
    fn relative_sqlite_sources_are_relative_to_the_config_file() {
        let c = parse("sources:\n  shop:\n    url: sqlite://shop.db\n").unwrap();
        let src = &c.sources[&SourceName::parse("shop").unwrap()];
        assert_eq!(src.url.expose(), "sqlite://conf/shop.db");
    }

    #[test]
    fn targets_and_plan_rules_are_read() {
        let c = parse(
            "targets:\n  ledger-writer:\n    url: postgres://writer:${LEDGER_PASSWORD}@db/ledger\n  billing:\n    base_url: https://billing.example/api\n    headers: {Authorization: \"Bearer ${LEDGER_PASSWORD}\"}\nplans:\n  ttl: 2h\n  approvals: {critical: 3}\n",
        )
        .unwrap();
        let Some(TargetConfig::Sql(sql)) = c
            .targets
            .values()
            .find(|t| t.name().as_str() == "ledger-writer")
        else {
            panic!("{:?}", c.targets)
        };
        assert_eq!(sql.kind, SourceKind::Postgres);
        assert_eq!(sql.marker_table, DEFAULT_MARKER_TABLE);
        let Some(TargetConfig::Http(http)) =
            c.targets.values().find(|t| t.name().as_str() == "billing")
        else {
            panic!("{:?}", c.targets)
        };
        assert_eq!(http.base_url, "https://billing.example/api/");
        assert!(!http.allow_private_network);
        assert_eq!(c.plans.approvals_for(crate::domain::Severity::Critical), 3);
        assert_eq!(c.plans.approvals_for(crate::domain::Severity::High), 1);
        assert_eq!(c.plans.ttl.as_std().as_secs(), 7200);
    }

    #[test]
    fn a_credential_header_written_in_the_file_is_refused_and_one_from_the_environment_is_read() {
        for header in [
            "Authorization: \"Bearer abc123\"",
            "Proxy-Authorization: \"Basic abc123\"",
            "X-Api-Key: abc123",
            "Cookie: \"session=abc123\"",
        ] {
            let name = header.split(':').next().unwrap();
            let err = parse(&format!(
                "targets:\n  billing:\n    base_url: https://billing.example/\n    headers:\n      {header}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("conf/trueup.yaml:5:"), "{err}");
            assert!(
                err.contains(&format!(
                    "header `{name}` carries a credential written in the file"
                )),
                "{err}"
            );
            assert!(err.contains("${BILLING_TOKEN}"), "{err}");
            assert!(!err.contains("abc123"), "{err}");
        }
        let c = parse(
            "targets:\n  billing:\n    base_url: https://billing.example/\n    headers: {X-Api-Key: \"${LEDGER_PASSWORD}\", Accept: application/json}\n",
        )
        .unwrap();
        let Some(TargetConfig::Http(http)) = c.targets.values().next() else {
            panic!("{:?}", c.targets)
        };
        let key = http.headers.iter().find(|(h, _)| h == "X-Api-Key").unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&key.1), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_webhook_url_with_a_literal_token_in_its_query_is_refused() {
        let err = parse(
            "notifications:\n  channels:\n    ops:\n      webhook: {url: \"https://hooks.example/x?token=abc123\"}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`token=` written in the file"), "{err}");
        assert!(!err.contains("abc123"), "{err}");
    }

    #[test]
    fn a_target_mistake_says_where_and_what_to_write() {
        let err = parse("targets:\n  w:\n    url: postgres://u:pw@db/x\n  h:\n    base_url: ftp://x/\n  b:\n    url: sqlite://x.db\n    base_url: https://x/\nplans:\n  approvals: {urgent: 2}\n")
            .unwrap_err();
        let shown: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown
                .iter()
                .any(|s| s.contains(":3:") && s.contains("password written in the file")),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains(":5:") && s.contains("http:// or https://")),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains("targets.b") && s.contains("not both")),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains("`urgent` is not a severity")),
            "{shown:#?}"
        );
    }
}
