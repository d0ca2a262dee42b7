//! `trueup.yaml` as written (`Raw*`) → [`Config`], section by section; every problem is
//! collected with its location, none stops the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::secret::{expand_env, expand_secret_url};
use super::*;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::domain::{HumanDuration, Role, SourceName};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    store: Option<Spanned<String>>,
    invariants: Option<Spanned<String>>,
    #[serde(default)]
    sources: BTreeMap<String, Spanned<RawSource>>,
    serve: Option<RawServe>,
    notifications: Option<RawNotifications>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<targets::RawTarget>>,
    plans: Option<targets::RawPlans>,
    #[serde(default)]
    event_logs: BTreeMap<String, Spanned<super::logs::RawEventLog>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifications {
    #[serde(default)]
    channels: BTreeMap<String, Spanned<RawChannel>>,
    route: Option<Spanned<super::routes::RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    email: Option<RawEmail>,
    webhook: Option<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmail {
    smtp: Spanned<String>,
    username: Option<String>,
    password: Option<Spanned<String>>,
    from: Spanned<String>,
    to: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    url: Spanned<String>,
    format: Option<Spanned<String>>,
    routing_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServe {
    listen: Option<Spanned<String>>,
    run_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    lease: Option<Spanned<String>>,
    external_url: Option<Spanned<String>>,
    #[serde(default)]
    tokens: Vec<Spanned<RawToken>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    name: Spanned<String>,
    role: Spanned<String>,
    /// `${ENV_VAR}` holding the token.
    token: Option<Spanned<String>>,
    /// The token's SHA-256, in hex.
    sha256: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    kind: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    pool_size: Option<Spanned<u32>>,
    statement_timeout: Option<Spanned<String>>,
    on_writable: Option<Spanned<String>>,
    allow_privileged_role: Option<bool>,
    // `kind: http`
    base_url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rate: Option<Spanned<f64>>,
    retries: Option<Spanned<u32>>,
    #[serde(default)]
    allow_private_network: bool,
}

/// Parses config text. `env` resolves `${VAR}` references. Every problem is reported.
pub(super) fn config(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Diagnostics> {
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig {
            store: None,
            invariants: None,
            sources: BTreeMap::new(),
            serve: None,
            notifications: None,
            targets: BTreeMap::new(),
            plans: None,
            event_logs: BTreeMap::new(),
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

    let store = store(&raw, path, &base, env, &mut errors);
    let invariants_dir = base.join(
        raw.invariants
            .as_ref()
            .map(|s| s.value.as_str())
            .unwrap_or(DEFAULT_INVARIANTS_DIR),
    );

    let sources = sources(&raw, path, &base, env, &mut errors);

    let serve = serve(&raw, path, env, &mut errors);

    let channels = channels(&raw, path, env, &mut errors);
    let route = raw
        .notifications
        .as_ref()
        .and_then(|n| n.route.as_ref())
        .and_then(|r| {
            let names: Vec<String> = raw
                .notifications
                .iter()
                .flat_map(|n| n.channels.keys().cloned())
                .collect();
            super::routes::parse_route(r, &names, path, &mut errors)
        });

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

    let event_logs = super::logs::parse_logs(&raw.event_logs, &sources, env, path, &mut errors);

    if errors.is_empty() {
        Ok(Config {
            file: Some(path.to_owned()),
            store,
            invariants_dir,
            sources,
            serve,
            channels,
            route,
            targets,
            plans,
            event_logs,
        })
    } else {
        Err(Diagnostics(errors))
    }
}

/// `store:`, its `${VAR}`s expanded, a relative SQLite path made relative to the file.
fn store(
    raw: &RawConfig,
    path: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<Diagnostic>,
) -> SecretUrl {
    match &raw.store {
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
                url.map(|u| resolve_sqlite_path(u, base))
            }
            Err(msg) => {
                errors.push(Diagnostic::at(path, s.referenced, format!("store: {msg}")));
                SecretUrl::new(String::new())
            }
        },
        None => SecretUrl::new(resolve_sqlite_path(DEFAULT_STORE, base)),
    }
}

/// `sources:`: each source's URL, kind and settings; a source with a problem is left out.
fn sources(
    raw: &RawConfig,
    path: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<Diagnostic>,
) -> BTreeMap<SourceName, SourceConfig> {
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
        if src.kind.as_ref().is_some_and(|k| k.value == "http") || src.base_url.is_some() {
            match http_source(name, spanned, env) {
                Ok(http) => {
                    sources.insert(http.name.clone(), SourceConfig::Http(http));
                }
                Err(msg) => errors.push(Diagnostic::at(path, msg.0, msg.1)),
            }
            continue;
        }
        let scheme = |s: &[&str]| {
            src.url
                .as_ref()
                .is_some_and(|u| s.iter().any(|p| u.value.starts_with(p)))
        };
        let kind_is = |k: &str| src.kind.as_ref().is_some_and(|v| v.value == k);
        if kind_is("nats") || (src.kind.is_none() && scheme(&["nats://"])) {
            match server_source(name, spanned, env, "NATS", &["nats://"], 10) {
                Ok((name, url, timeout)) => {
                    let nats = NatsSource { name, url, timeout };
                    sources.insert(nats.name.clone(), SourceConfig::Nats(nats));
                }
                Err(msg) => errors.push(Diagnostic::at(path, msg.0, msg.1)),
            }
            continue;
        }
        if kind_is("redis") || (src.kind.is_none() && scheme(&["redis://", "rediss://"])) {
            // TLS to Redis is not built in (rediss:// would fail at every connect).
            match server_source(name, spanned, env, "Redis", &["redis://"], 10) {
                Ok((name, url, timeout)) => {
                    let redis = RedisSource { name, url, timeout };
                    sources.insert(redis.name.clone(), SourceConfig::Redis(redis));
                }
                Err(msg) => errors.push(Diagnostic::at(path, msg.0, msg.1)),
            }
            continue;
        }
        let Some(url_field) = &src.url else {
            errors.push(Diagnostic::at(
                path,
                at,
                format!(
                    "source `{name}`: give `url:` (a database: postgres://, mysql:// or sqlite://) or `kind: http` and `base_url:` (an HTTP API)"
                ),
            ));
            continue;
        };
        if let Some(field) = src.http_field() {
            errors.push(Diagnostic::at(
                path,
                at,
                format!(
                    "source `{name}`: `{field}` belongs to HTTP sources (`kind: http`); a database source has url, pool_size, statement_timeout, on_writable and allow_privileged_role"
                ),
            ));
            continue;
        }
        let url = match expand_secret_url(&url_field.value, env) {
            Ok(u) => u,
            Err(msg) => {
                errors.push(Diagnostic::at(
                    path,
                    url_field.referenced,
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
                            "source `{name}`: kind `{}` is unknown; use postgres, mysql, sqlite, http, nats or redis",
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
                    url_field.referenced,
                    format!(
                        "source `{name}`: cannot tell the database from URL `{}`; start it with postgres://, mysql:// or sqlite:// (an HTTP API is `kind: http` with `base_url:`)",
                        // As written: `${VAR}` references, never their values.
                        url_field.value
                    ),
                ));
                continue;
            }
        };
        if kind == SourceKind::MySql
            && let Some(problem) = mysql_session_problem(url.expose())
        {
            errors.push(Diagnostic::at(
                path,
                url_field.referenced,
                format!("source `{name}`: {problem}"),
            ));
            continue;
        }
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
            SourceKind::Sqlite => url.map(|u| resolve_sqlite_path(u, base)),
            _ => url,
        };
        sources.insert(
            name.clone(),
            SourceConfig::Sql(SqlSource {
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
            }),
        );
    }
    sources
}

impl RawSource {
    /// The first setting given that only an HTTP source has.
    fn http_field(&self) -> Option<&'static str> {
        [
            ("base_url", self.base_url.is_some()),
            ("headers", !self.headers.is_empty()),
            ("timeout", self.timeout.is_some()),
            ("rate", self.rate.is_some()),
            ("retries", self.retries.is_some()),
            ("allow_private_network", self.allow_private_network),
        ]
        .into_iter()
        .find_map(|(field, given)| given.then_some(field))
    }
}

/// A stream server's source (`kind: nats`, `kind: redis`): its name, URL (one of `schemes`)
/// and timeout (`default_secs` when not given); `Err((where, what))`.
fn server_source(
    name: SourceName,
    spanned: &Spanned<RawSource>,
    env: &dyn Fn(&str) -> Option<String>,
    server: &str,
    schemes: &[&str],
    default_secs: u64,
) -> Result<(SourceName, SecretUrl, HumanDuration), (serde_saphyr::Location, String)> {
    let src = &spanned.value;
    let err = |at, msg: String| (at, format!("source `{name}`: {msg}"));
    let other = [
        ("pool_size", src.pool_size.is_some()),
        ("statement_timeout", src.statement_timeout.is_some()),
        ("on_writable", src.on_writable.is_some()),
        ("allow_privileged_role", src.allow_privileged_role.is_some()),
        ("base_url", src.base_url.is_some()),
        ("headers", !src.headers.is_empty()),
        ("rate", src.rate.is_some()),
        ("retries", src.retries.is_some()),
        ("allow_private_network", src.allow_private_network),
    ]
    .into_iter()
    .find_map(|(field, given)| given.then_some(field));
    if let Some(field) = other {
        return Err(err(
            spanned.referenced,
            format!("`{field}` does not belong to a {server} source, which has url and timeout"),
        ));
    }
    let Some(url) = &src.url else {
        return Err(err(
            spanned.referenced,
            format!(
                "a {server} source needs `url:`, like {}127.0.0.1",
                schemes[0]
            ),
        ));
    };
    let expanded = server_url(url, env, server, schemes)
        .map_err(|(at, m)| err(at, format!("a {server} source's {m}")))?;
    let timeout = match &src.timeout {
        Some(t) => HumanDuration::parse(&t.value)
            .map_err(|e| err(t.referenced, format!("timeout: {e}")))?,
        None => HumanDuration::from_std(std::time::Duration::from_secs(default_secs)),
    };
    Ok((name, expanded, timeout))
}

/// A NATS or Redis server's URL (`schemes`, the first one shown in examples) with credentials
/// only from `${ENV}`; `Err((where, what))`, the message starting with `url`.
pub(super) fn server_url(
    url: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
    server: &str,
    schemes: &[&str],
) -> Result<SecretUrl, (serde_saphyr::Location, String)> {
    if !schemes.iter().any(|s| url.value.starts_with(s)) {
        return Err((
            url.referenced,
            format!(
                "url starts with {}, not `{}`",
                schemes.join(" or "),
                url.value
            ),
        ));
    }
    // A token alone before `@` (NATS token auth) is a credential too, which a URL's password
    // rule would not see.
    let userinfo = url.value.split_once("://").and_then(|(_, rest)| {
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        authority.rsplit_once('@').map(|(info, _)| info)
    });
    if let Some(info) = userinfo
        && !info.contains(':')
        && !info.contains("${")
    {
        return Err((
            url.referenced,
            format!(
                "url holds a credential before `@` written in the file; write it from the environment, like `{}${{{}_TOKEN}}@host`",
                schemes[0],
                server.to_uppercase()
            ),
        ));
    }
    expand_secret_url(&url.value, env).map_err(|m| (url.referenced, format!("url: {m}")))
}

/// A `kind: http` source; `Err((where, what))`.
fn http_source(
    name: SourceName,
    spanned: &Spanned<RawSource>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HttpSource, (serde_saphyr::Location, String)> {
    let src = &spanned.value;
    let err = |at, msg: String| (at, format!("source `{name}`: {msg}"));
    if let Some(kind) = &src.kind
        && kind.value != "http"
    {
        return Err(err(
            kind.referenced,
            format!(
                "kind is `{}` but `base_url` is an HTTP API's; an HTTP source is `kind: http`",
                kind.value
            ),
        ));
    }
    let sql_field = [
        ("url", src.url.is_some()),
        ("pool_size", src.pool_size.is_some()),
        ("statement_timeout", src.statement_timeout.is_some()),
        ("on_writable", src.on_writable.is_some()),
        ("allow_privileged_role", src.allow_privileged_role.is_some()),
    ]
    .into_iter()
    .find_map(|(field, given)| given.then_some(field));
    if let Some(field) = sql_field {
        return Err(err(
            spanned.referenced,
            format!(
                "`{field}` belongs to database sources; an HTTP source has base_url, headers, timeout, rate, retries and allow_private_network"
            ),
        ));
    }
    let Some(base) = &src.base_url else {
        return Err(err(
            spanned.referenced,
            "an HTTP source needs `base_url:`, the API's address (like https://api.example.com/v1/)".into(),
        ));
    };
    let base_url =
        super::targets::parse_base_url(&base.value).map_err(|m| err(base.referenced, m))?;
    let headers =
        super::targets::parse_headers(&src.headers, env, &[]).map_err(|(at, m)| err(at, m))?;
    let timeout = match &src.timeout {
        Some(t) => HumanDuration::parse(&t.value)
            .map_err(|e| err(t.referenced, format!("timeout: {e}")))?,
        None => HumanDuration::from_std(std::time::Duration::from_secs(30)),
    };
    let rate = match &src.rate {
        Some(r) if !(r.value.is_finite() && r.value >= 0.001) => {
            return Err(err(
                r.referenced,
                format!(
                    "rate `{}` must be a number of requests per second, at least 0.001 (like 10, or 0.5 for one every two seconds)",
                    r.value
                ),
            ));
        }
        Some(r) => Some(r.value),
        None => None,
    };
    let retries = match &src.retries {
        Some(r) if r.value > 20 => {
            return Err(err(
                r.referenced,
                "retries must be at most 20 (each waits longer than the last)".into(),
            ));
        }
        Some(r) => r.value,
        None => 5,
    };
    Ok(HttpSource {
        name,
        base_url,
        headers,
        timeout,
        rate,
        retries,
        allow_private_network: src.allow_private_network,
    })
}

/// `serve:`: the listener, API tokens and durations, each defaulted when absent.
fn serve(
    raw: &RawConfig,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<Diagnostic>,
) -> ServeConfig {
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
        if let Some(u) = &raw_serve.external_url {
            match crate::domain::WebUrl::parse_base(&u.value) {
                Ok(url) => serve.external_url = Some(url),
                Err(e) => errors.push(Diagnostic::at(
                    path,
                    u.referenced,
                    format!("serve.external_url: {e}"),
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
    serve
}

/// `notifications.channels`.
fn channels(
    raw: &RawConfig,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<Diagnostic>,
) -> BTreeMap<String, ChannelConfig> {
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
    channels
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
                Some(("pagerduty", _)) => WebhookFormat::PagerDuty,
                Some((other, at)) => {
                    return Err((
                        Some(at),
                        format!("format `{other}` is unknown; use json, slack or pagerduty"),
                    ));
                }
            };
            let routing_key = match (&w.routing_key, format) {
                (Some(k), WebhookFormat::PagerDuty) => {
                    if !super::secret::is_env_reference(&k.value) {
                        return Err((
                            Some(k.referenced),
                            "the routing key is written in the file; write `routing_key: ${PAGERDUTY_ROUTING_KEY}` and set that environment variable".into(),
                        ));
                    }
                    let key = expand_env(&k.value, env).map_err(|m| (Some(k.referenced), m))?;
                    Some(secrecy::SecretString::from(key))
                }
                (None, WebhookFormat::PagerDuty) => {
                    return Err((
                        Some(w.url.referenced),
                        "format: pagerduty needs `routing_key: ${PAGERDUTY_ROUTING_KEY}`: the integration key of the PagerDuty service (Events API v2)".into(),
                    ));
                }
                (Some(k), _) => {
                    return Err((
                        Some(k.referenced),
                        "routing_key applies to `format: pagerduty` only".into(),
                    ));
                }
                (None, _) => None,
            };
            Ok(ChannelConfig::Webhook(WebhookChannel {
                url,
                format,
                routing_key,
            }))
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
