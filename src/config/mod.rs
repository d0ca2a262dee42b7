//! `trueup.yaml`: where trueup keeps its ledger, which databases it reads, where the invariant
//! files are. Layers: built-in defaults, then the file, then `TRUEUP_*` environment variables.
//! Credentials only arrive through `${ENV_VAR}` references and never print.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::domain::{HumanDuration, LogName, Role, SourceName, TargetName};

mod logs;
mod parse;
mod routes;
mod secret;
mod targets;
#[cfg(test)]
mod tests;

pub use logs::{
    DEFAULT_MAX_EVENT_BYTES, DEFAULT_SIGNATURE_HEADER, EventLogConfig, FeedStart, LogFeed,
    NatsFeed, RedisFeed, WebhookFeed,
};
pub use secret::SecretUrl;
pub(crate) use secret::header_holds_a_secret;
pub use targets::{
    DEFAULT_MARKER_KEY, DEFAULT_MARKER_TABLE, HttpTarget, NatsTarget, PlansConfig, RedisTarget,
    SqlTarget, TargetConfig,
};

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
    /// `notifications.route`, if written; see [`Config::route`].
    pub route: Option<crate::domain::Route>,
    /// What approved compensating actions may change.
    pub targets: BTreeMap<TargetName, TargetConfig>,
    pub plans: PlansConfig,
    /// trueup's own event logs, by name.
    pub event_logs: BTreeMap<LogName, EventLogConfig>,
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
    /// A Slack Block Kit message (with `text` as its fallback, which Mattermost and
    /// Rocket.Chat incoming webhooks show).
    Slack,
    /// A PagerDuty Events API v2 event: `trigger`, or `resolve` when the alert resolves.
    PagerDuty,
}

#[derive(Debug, Clone)]
pub struct WebhookChannel {
    pub url: SecretUrl,
    pub format: WebhookFormat,
    /// The PagerDuty integration's routing key (`format: pagerduty` only).
    pub routing_key: Option<secrecy::SecretString>,
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
    /// The console's address as people reach it (behind a proxy, say): notices link to it.
    pub external_url: Option<crate::domain::WebUrl>,
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
            external_url: None,
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

/// A source: a database trueup reads with SQL, or an HTTP API it pages through.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Sql(SqlSource),
    Http(HttpSource),
    Nats(NatsSource),
    Redis(RedisSource),
}

impl SourceConfig {
    pub fn name(&self) -> &SourceName {
        match self {
            SourceConfig::Sql(s) => &s.name,
            SourceConfig::Http(s) => &s.name,
            SourceConfig::Nats(s) => &s.name,
            SourceConfig::Redis(s) => &s.name,
        }
    }

    /// What an invariant side on this source is written as.
    pub fn class(&self) -> SourceClass {
        match self {
            SourceConfig::Sql(s) => SourceClass::Sql(s.kind),
            SourceConfig::Http(_) => SourceClass::Http,
            SourceConfig::Nats(_) => SourceClass::Nats,
            SourceConfig::Redis(_) => SourceClass::Redis,
        }
    }
}

impl From<SqlSource> for SourceConfig {
    fn from(s: SqlSource) -> Self {
        SourceConfig::Sql(s)
    }
}

/// What a side on a source is written as: a query in the engine's SQL, or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceClass {
    Sql(SourceKind),
    Http,
    /// NATS JetStream: a side names a stream.
    Nats,
    /// Redis: a side names a stream's key.
    Redis,
    /// One of trueup's own event logs (`source: log:NAME`): a side gives its columns.
    Log,
}

impl fmt::Display for SourceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceClass::Sql(kind) => kind.fmt(f),
            SourceClass::Http => f.write_str("http"),
            SourceClass::Nats => f.write_str("nats"),
            SourceClass::Redis => f.write_str("redis"),
            SourceClass::Log => f.write_str("event log"),
        }
    }
}

/// An HTTP API read page by page (`kind: http`).
#[derive(Debug, Clone)]
pub struct HttpSource {
    pub name: SourceName,
    /// Ends with `/`; every request's URL starts with it.
    pub base_url: String,
    /// Sent with every request; values may carry credentials (from `${ENV}` only) and never
    /// print.
    pub headers: Vec<(String, secrecy::SecretString)>,
    /// For one request, connecting included.
    pub timeout: HumanDuration,
    /// Requests per second at most (`None`: as fast as the API answers).
    pub rate: Option<f64>,
    /// How often a request refused with 429 or 5xx, or that timed out, is tried again.
    pub retries: u32,
    /// Lets this source reach loopback, private, link-local and metadata addresses, which are
    /// refused by default.
    pub allow_private_network: bool,
}

/// A NATS server with JetStream (`kind: nats`), whose streams sides read.
#[derive(Debug, Clone)]
pub struct NatsSource {
    pub name: SourceName,
    /// `nats://host:4222`, credentials (`nats://user:${PASSWORD}@host`) only from `${ENV}`.
    pub url: SecretUrl,
    /// For connecting, and for each answer of the server while a stream is read.
    pub timeout: HumanDuration,
}

/// A Redis server (`kind: redis`), whose streams sides read.
#[derive(Debug, Clone)]
pub struct RedisSource {
    pub name: SourceName,
    /// `redis://host:6379/0` (no TLS: `rediss://` is refused), a password (`redis://:${PASSWORD}@host`) only
    /// from `${ENV}`.
    pub url: SecretUrl,
    /// To connect, and for each answer of the server.
    pub timeout: HumanDuration,
}

/// A database read with SQL.
#[derive(Debug, Clone)]
pub struct SqlSource {
    pub name: SourceName,
    pub kind: SourceKind,
    pub url: SecretUrl,
    pub pool_size: u32,
    pub statement_timeout: HumanDuration,
    pub on_writable: WritablePolicy,
    pub on_privileged: PrivilegedPolicy,
}

impl Config {
    /// Where notices go: `notifications.route` as written, or without one every channel,
    /// at once, each notice on its own.
    pub fn route(&self) -> crate::domain::Route {
        self.route.clone().unwrap_or_else(|| {
            crate::domain::Route::every_channel(self.channels.keys().cloned().collect())
        })
    }

    /// Defaults only: the embedded SQLite store in the working directory.
    pub fn defaults(base_dir: &Path) -> Self {
        Self {
            file: None,
            store: SecretUrl::new(resolve_sqlite_path(DEFAULT_STORE, base_dir)),
            invariants_dir: base_dir.join(DEFAULT_INVARIANTS_DIR),
            sources: BTreeMap::new(),
            serve: ServeConfig::default(),
            channels: BTreeMap::new(),
            route: None,
            targets: BTreeMap::new(),
            plans: PlansConfig::default(),
            event_logs: BTreeMap::new(),
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
        parse::config(text, path, env)
    }
}

/// What is wrong with the session a MySQL/MariaDB URL asks for, if anything: the settings
/// that would change the values trueup reads or writes. Its character set (`charset`,
/// `collation`) must be utf8mb4, in which every character passes as it is: in another one, a
/// character it lacks becomes `?`, so two different texts would read alike. Its time zone
/// (`timezone`) must be UTC: the protocol carries a TIMESTAMP without its offset, and trueup
/// takes it as UTC, so another zone would shift every instant. (A URL that does not parse is
/// left to the connect, which says why.)
fn mysql_session_problem(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let utc = |zone: &str| {
        zone.eq_ignore_ascii_case("utc") || matches!(zone, "+00:00" | "-00:00" | "+0:00")
    };
    url.query_pairs().find_map(|(key, value)| match &*key {
        "charset" if !value.eq_ignore_ascii_case("utf8mb4") => Some(format!(
            "its URL sets `charset={value}`; trueup's MySQL sessions are utf8mb4, in which every character passes as it is (in {value}, a character it lacks becomes `?`, and two different texts would read alike); remove `charset` from the URL"
        )),
        "collation" if !value.to_ascii_lowercase().starts_with("utf8mb4_") => Some(format!(
            "its URL sets `collation={value}`, which is not a utf8mb4 collation; trueup's MySQL sessions are utf8mb4, in which every character passes as it is; remove `collation` from the URL"
        )),
        "timezone" | "time-zone" if !utc(&value) => Some(format!(
            "its URL sets `{key}={value}`; trueup's MySQL sessions run in UTC: the protocol carries a TIMESTAMP without its offset, and in another time zone every one read or written would be shifted; remove `{key}` from the URL"
        )),
        _ => None,
    })
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
