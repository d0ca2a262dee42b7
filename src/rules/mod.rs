//! Invariant files: YAML in `invariants/`, turned into [`Invariant`]s. Like `promtool check
//! rules`, loading reports every problem in every file at once, each with file:line:column,
//! the invariant it belongs to and what to do.

mod advice;
mod compensation;
mod query;
mod raw;
mod request;
mod shape;

pub use advice::advice;
pub use compensation::check_statement;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

use crate::config::SourceClass;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::domain::{
    AlertPolicy, CheckSpec, ColumnName, Expect, HumanDuration, Incremental, Invariant,
    InvariantName, InvariantSpec, QuerySide, Read, ReconcileMode, ReconcileSpec, Schedule,
    Severity, SourceName, TargetName, TransitionsSpec,
};

pub const DEFAULT_SAMPLE_LIMIT: usize = 10;
pub const DEFAULT_VIOLATION_BUDGET: u64 = 10_000;

/// The names an invariant may refer to, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Each source and what a side on it is written as (a query in its engine's SQL, or a
    /// request).
    pub sources: BTreeMap<SourceName, SourceClass>,
    pub channels: BTreeSet<String>,
    pub targets: BTreeMap<TargetName, TargetInfo>,
    /// Database sources whose pool holds one connection: a reconcile cannot read both of
    /// its sides from one of them, since it reads them at once.
    pub single_connection: BTreeSet<SourceName>,
    /// Event logs (as sources, `log:<name>`) whose `retain` purges old events: only as far
    /// as each reader's last completed full run, so a reader that never runs holds them.
    pub retained_logs: BTreeSet<SourceName>,
}

/// What a compensation needs to know of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetInfo {
    /// A writable database of this engine (for its SQL grammar and parameter style).
    Sql(crate::config::SourceKind),
    Http,
    Nats,
    Redis,
}

impl TargetInfo {
    /// What kind of target this is, with its article ("an HTTP target").
    pub fn described(self) -> &'static str {
        match self {
            TargetInfo::Sql(_) => "a SQL target",
            TargetInfo::Http => "an HTTP target",
            TargetInfo::Nats => "a NATS target",
            TargetInfo::Redis => "a Redis target",
        }
    }
}

impl Known {
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            sources: config
                .sources
                .iter()
                .map(|(name, s)| (name.clone(), s.class()))
                .chain(
                    config
                        .event_logs
                        .keys()
                        .map(|log| (SourceName::of_log(log), SourceClass::Log)),
                )
                .collect(),
            channels: config.channels.keys().cloned().collect(),
            retained_logs: config
                .event_logs
                .iter()
                .filter(|(_, log)| log.retain.is_some())
                .map(|(log, _)| SourceName::of_log(log))
                .collect(),
            single_connection: config
                .sources
                .iter()
                .filter(|(_, s)| {
                    matches!(s, crate::config::SourceConfig::Sql(sql) if sql.pool_size < 2)
                })
                .map(|(name, _)| name.clone())
                .collect(),
            targets: config
                .targets
                .iter()
                .map(|(name, t)| {
                    let info = match t {
                        crate::config::TargetConfig::Sql(s) => TargetInfo::Sql(s.kind),
                        crate::config::TargetConfig::Http(_) => TargetInfo::Http,
                        crate::config::TargetConfig::Nats(_) => TargetInfo::Nats,
                        crate::config::TargetConfig::Redis(_) => TargetInfo::Redis,
                    };
                    (name.clone(), info)
                })
                .collect(),
        }
    }
}

/// Loads every `*.yaml` / `*.yml` file under `path` (or the one file `path` names). An
/// invariant naming a source or channel that `known` does not list is an error.
pub fn load(path: &Path, known: &Known) -> Result<Vec<Invariant>, Diagnostics> {
    let files = rule_files(path).map_err(|d| Diagnostics(vec![d]))?;
    let mut invariants = Vec::new();
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let (found, errs) = parse_file(&text, file, known);
                invariants.extend(found);
                errors.extend(errs);
            }
            Err(e) => errors.push(Diagnostic::new(file, 0, 0, format!("cannot read: {e}"))),
        }
    }
    let mut seen: BTreeMap<&InvariantName, &Invariant> = BTreeMap::new();
    for inv in &invariants {
        if let Some(first) = seen.insert(&inv.name, inv) {
            errors.push(
                Diagnostic::new(
                    &inv.defined_at.0,
                    inv.defined_at.1,
                    1,
                    format!(
                        "the name is already used at {}:{}; invariant names must be unique",
                        first.defined_at.0.display(),
                        first.defined_at.1
                    ),
                )
                .in_invariant(Some(inv.name.as_str())),
            );
        }
    }
    if errors.is_empty() {
        Ok(invariants)
    } else {
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Err(Diagnostics(errors))
    }
}

fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Diagnostic::new(
            path,
            0,
            0,
            format!("cannot open the invariants path: {e}; create it or point `invariants:` in trueup.yaml at your rule files"),
        )
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Diagnostic::new(&dir, 0, 0, format!("cannot list: {e}")))?;
        for entry in entries {
            let p = entry
                .map_err(|e| Diagnostic::new(&dir, 0, 0, format!("cannot list: {e}")))?
                .path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Parses one file: the invariants that are sound, and every problem found.
pub fn parse_file(text: &str, file: &Path, known: &Known) -> (Vec<Invariant>, Vec<Diagnostic>) {
    let mut errors = shape::unknown_fields(text, file);
    let raw: raw::RawFile = match crate::yaml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let d = Diagnostic::from_yaml(file, &e);
            // An unknown field is already reported by the shape pass, with a suggestion.
            if !errors.iter().any(|x| x.line == d.line) {
                errors.push(d);
            }
            return (Vec::new(), errors);
        }
    };
    let mut invariants = Vec::new();
    for spanned in raw.invariants {
        let mut ctx = Ctx {
            file,
            name: None,
            errors: Vec::new(),
        };
        if let Some(inv) = build_invariant(spanned, known, &mut ctx) {
            invariants.push(inv);
        }
        errors.extend(ctx.errors);
    }
    (invariants, errors)
}

struct Ctx<'a> {
    file: &'a Path,
    name: Option<String>,
    errors: Vec<Diagnostic>,
}

/// What a side says to read, as written: one of a query, a request or a stream.
#[derive(Clone, Copy)]
pub(super) struct RawRead<'a> {
    pub query: Option<&'a Spanned<String>>,
    pub request: Option<&'a Spanned<raw::RawRequest>>,
    pub stream: Option<&'a Spanned<raw::RawStream>>,
}

impl Ctx<'_> {
    fn error(&mut self, at: Location, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::at(self.file, at, message).in_invariant(self.name.as_deref()));
    }

    fn parse<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        s: &Spanned<String>,
        f: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match f(&s.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(s.referenced, format!("{field}: {e}"));
                None
            }
        }
    }

    fn incremental(&mut self, raw: &Spanned<raw::RawIncremental>) -> Option<Incremental> {
        const FIELD: &str = "reconcile.incremental";
        let inc = &raw.value;
        let column = |ctx: &mut Self, field: &str, name: &str| -> Option<ColumnName> {
            match ColumnName::parse(name) {
                Ok(c) => Some(c),
                Err(e) => {
                    let at = inc.column.as_ref().map_or(raw.referenced, |c| c.referenced);
                    ctx.error(at, format!("{FIELD}.{field}: {e}"));
                    None
                }
            }
        };
        let columns = match inc.column.as_ref().map(|c| &c.value) {
            None => {
                self.error(
                    raw.referenced,
                    format!("{FIELD}.column is missing: name the column whose value moves when a row changes (e.g. `column: updated_at`, or `column: {{left: updated_at, right: recorded_at}}`)"),
                );
                None
            }
            Some(raw::RawChangeColumn::Both(c)) => {
                column(self, "column", c).map(|c| (Some(c.clone()), Some(c)))
            }
            Some(raw::RawChangeColumn::PerSide(sides)) => {
                if sides.left.is_none() && sides.right.is_none() {
                    let at = inc.column.as_ref().map_or(raw.referenced, |c| c.referenced);
                    self.error(
                        at,
                        format!("{FIELD}.column: name the change column of the left side, the right side or both"),
                    );
                    None
                } else {
                    let left = sides.left.as_ref().map(|c| column(self, "column.left", c));
                    let right = sides
                        .right
                        .as_ref()
                        .map(|c| column(self, "column.right", c));
                    match (left, right) {
                        (Some(None), _) | (_, Some(None)) => None,
                        (l, r) => Some((l.flatten(), r.flatten())),
                    }
                }
            }
        };
        let lookback = match &inc.lookback {
            Some(l) => self.parse(&format!("{FIELD}.lookback"), l, HumanDuration::parse),
            None => {
                self.error(
                    raw.referenced,
                    format!("{FIELD}.lookback is missing: say how long after its change-column time a change may still commit (the longest transaction, plus how far the writers' clocks may lag), e.g. `lookback: 5m`"),
                );
                None
            }
        };
        let full_every = match &inc.full_every {
            Some(f) => {
                let every = self.parse(&format!("{FIELD}.full_every"), f, HumanDuration::parse);
                if every.is_some_and(|e| e.as_std().is_zero()) {
                    self.error(
                        f.referenced,
                        format!("{FIELD}.full_every: must be longer than zero (without incremental runs, leave `incremental:` out)"),
                    );
                    return None;
                }
                every
            }
            None => Some(HumanDuration::from_std(Incremental::DEFAULT_FULL_EVERY)),
        };
        let (left, right) = columns?;
        Some(Incremental {
            left,
            right,
            lookback: lookback?,
            full_every: full_every?,
        })
    }

    fn columns(&mut self, field: &str, list: &Spanned<raw::OneOrMany>) -> Option<Vec<ColumnName>> {
        if list.value.0.is_empty() {
            self.error(
                list.referenced,
                format!("{field}: name at least one column"),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for c in &list.value.0 {
            match ColumnName::parse(c) {
                Ok(c) => out.push(c),
                Err(e) => {
                    self.error(list.referenced, format!("{field}: {e}"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn side(
        &mut self,
        field: &str,
        source: &Spanned<String>,
        raw: RawRead<'_>,
        scope: request::SideScope<'_>,
        sources: &BTreeMap<SourceName, SourceClass>,
    ) -> Option<QuerySide> {
        let name = self.source(field, source, sources);
        let class = name.as_ref().map(|n| sources[n]);
        let given: Vec<(&str, Location)> = [
            ("query", raw.query.map(|q| q.referenced)),
            ("request", raw.request.map(|r| r.referenced)),
            ("stream", raw.stream.map(|s| s.referenced)),
        ]
        .into_iter()
        .filter_map(|(what, at)| Some((what, at?)))
        .collect();
        let (what, at) = match given.as_slice() {
            [] => {
                self.error(
                    source.referenced,
                    format!("{field} needs `query:` (a SELECT, for a database source), `request:` (for an HTTP source) or `stream:` (for a NATS source)"),
                );
                return None;
            }
            [(first, _), (second, at), ..] => {
                self.error(
                    *at,
                    format!("{field} gives both `{first}:` and `{second}:`; a database source takes a query, an HTTP source a request, a NATS source a stream"),
                );
                return None;
            }
            [one] => *one,
        };
        if let Some(class) = class {
            let (wanted, is, hint) = match class {
                SourceClass::Sql(kind) => ("query", format!("a {kind} database"), "a SELECT"),
                SourceClass::Http => (
                    "request",
                    "an HTTP API".to_owned(),
                    "path, items, page, columns",
                ),
                SourceClass::Nats => (
                    "stream",
                    "a NATS JetStream server".to_owned(),
                    "name, subject, columns",
                ),
                SourceClass::Redis => ("stream", "a Redis server".to_owned(), "key, columns"),
                SourceClass::Log => ("stream", "an event log".to_owned(), "columns"),
            };
            if what != wanted {
                self.error(
                    at,
                    format!(
                        "{field}.{what}: source `{}` is {is}; read it with `{wanted}:` ({hint})",
                        source.value
                    ),
                );
                return None;
            }
        }
        let read = match (raw.query, raw.request, raw.stream) {
            (Some(q), _, _) => {
                let sql = self.query(field, q)?;
                match class {
                    Some(SourceClass::Sql(kind)) => match query::check_query(&sql, kind) {
                        Ok(()) => Some(Read::Sql(sql)),
                        Err(why) => {
                            self.error(q.referenced, format!("{field}.query {why}"));
                            None
                        }
                    },
                    // The source is unknown (already reported).
                    _ => None,
                }
            }
            (_, Some(r), _) => self
                .request(field, r, scope)
                .map(|r| Read::Http(Box::new(r))),
            (_, _, Some(st)) if class == Some(SourceClass::Log) => self
                .log_stream(field, st, name.as_ref()?)
                .map(|s| Read::Stream(Box::new(s))),
            (_, _, Some(st)) => {
                let redis = class == Some(SourceClass::Redis);
                self.stream(field, st, redis, scope.key)
                    .map(|s| Read::Stream(Box::new(s)))
            }
            (None, None, None) => None,
        };
        Some(QuerySide {
            source: name?,
            query: read?,
        })
    }

    fn source(
        &mut self,
        field: &str,
        raw: &Spanned<String>,
        sources: &BTreeMap<SourceName, SourceClass>,
    ) -> Option<SourceName> {
        let name = self.parse(&format!("{field}.source"), raw, SourceName::parse)?;
        if sources.contains_key(&name) {
            return Some(name);
        }
        let configured = if sources.is_empty() {
            "none are configured".to_owned()
        } else {
            let names: Vec<&str> = sources.keys().map(SourceName::as_str).collect();
            format!("configured: {}", names.join(", "))
        };
        let hint = suggest(name.as_str(), sources.keys().map(SourceName::as_str))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        self.error(
            raw.referenced,
            format!(
                "{field}.source: unknown source `{name}`{hint} ({configured}; sources are declared under `sources:` in trueup.yaml)"
            ),
        );
        None
    }

    fn query(&mut self, field: &str, raw: &Spanned<String>) -> Option<String> {
        let q = raw.value.trim().trim_end_matches(';').trim_end().to_owned();
        if q.is_empty() {
            self.error(
                raw.referenced,
                format!("{field}.query is empty; write a SELECT"),
            );
            return None;
        }
        Some(q)
    }
}

fn build_invariant(
    spanned: Spanned<raw::RawInvariant>,
    known: &Known,
    ctx: &mut Ctx<'_>,
) -> Option<Invariant> {
    let at = spanned.referenced;
    let raw = spanned.value;
    let name = match &raw.name {
        Some(n) => {
            ctx.name = Some(n.value.clone());
            ctx.parse("name", n, InvariantName::parse)
        }
        None => {
            ctx.error(at, "an invariant needs a `name`");
            None
        }
    };
    let severity = match &raw.severity {
        Some(s) => ctx.parse("severity", s, |v| {
            Severity::parse(v)
                .ok_or_else(|| format!("`{v}` is not a severity; use {}", Severity::NAMES))
        }),
        None => Some(Severity::Medium),
    };
    let schedule = match (&raw.schedule, &raw.timezone) {
        (Some(s), tz) => ctx
            .parse("schedule", s, Schedule::parse)
            .and_then(|schedule| match tz {
                Some(tz) => ctx
                    .parse("timezone", tz, |name| schedule.clone().in_timezone(name))
                    .map(Some),
                None => Some(Some(schedule)),
            }),
        (None, Some(tz)) => {
            ctx.error(
                tz.referenced,
                "timezone applies to a `schedule`; add one or remove the timezone",
            );
            None
        }
        (None, None) => Some(None),
    };
    let time_column = match &raw.time_column {
        Some(c) => ctx.parse("time_column", c, ColumnName::parse).map(Some),
        None => Some(None),
    };
    let grace = match &raw.grace {
        Some(g) => {
            let period = ctx.parse("grace", g, HumanDuration::parse);
            if raw.time_column.is_none() {
                ctx.error(
                    g.referenced,
                    "grace needs `time_column`: the column whose timestamp says when a row is due",
                );
                None
            } else if raw.transitions.is_some() {
                ctx.error(
                    g.referenced,
                    "grace applies to check and reconcile invariants; a state history has no pending rows",
                );
                None
            } else {
                period.map(Some)
            }
        }
        None => Some(None),
    };
    let (alert, notify) = match &raw.alert {
        None => (Some(AlertPolicy::default()), Some(None)),
        Some(a) => {
            let mut policy = AlertPolicy::default();
            let mut ok = true;
            for (field, value, slot) in [
                ("alert.for", &a.value.for_, &mut policy.for_),
                (
                    "alert.keep_firing_for",
                    &a.value.keep_firing_for,
                    &mut policy.keep_firing_for,
                ),
                (
                    "alert.repeat_interval",
                    &a.value.repeat_interval,
                    &mut policy.repeat_interval,
                ),
            ] {
                if let Some(v) = value {
                    match ctx.parse(field, v, HumanDuration::parse) {
                        Some(d) => *slot = d.as_chrono(),
                        None => ok = false,
                    }
                }
            }
            let notify = match &a.value.notify {
                None => Some(None),
                Some(list) => {
                    let unknown: Vec<&String> = list
                        .value
                        .0
                        .iter()
                        .filter(|c| !known.channels.contains(*c))
                        .collect();
                    if unknown.is_empty() {
                        Some(Some(list.value.0.clone()))
                    } else {
                        let configured: Vec<&str> =
                            known.channels.iter().map(String::as_str).collect();
                        ctx.error(
                            list.referenced,
                            format!(
                                "alert.notify: unknown channel `{}` (configured: {}; channels are declared under `notifications.channels` in trueup.yaml)",
                                unknown[0],
                                if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
                            ),
                        );
                        None
                    }
                }
            };
            (ok.then_some(policy), notify)
        }
    };
    let sample_limit = raw
        .sample_limit
        .map_or(DEFAULT_SAMPLE_LIMIT, |s| s as usize);
    let violation_budget = match &raw.violation_budget {
        Some(s) if s.value == 0 => {
            ctx.error(
                s.referenced,
                "violation_budget must be at least 1 (it caps how many violations one run stores)",
            );
            None
        }
        Some(s) => Some(s.value),
        None => Some(DEFAULT_VIOLATION_BUDGET),
    };

    let blocks = [
        raw.check.as_ref().map(|b| b.referenced),
        raw.reconcile.as_ref().map(|b| b.referenced),
        raw.transitions.as_ref().map(|b| b.referenced),
    ];
    let spec = match blocks.iter().flatten().count() {
        0 => {
            ctx.error(
                at,
                "say what to evaluate: add one `check:`, `reconcile:` or `transitions:` block",
            );
            None
        }
        1 => build_spec(&raw, known, ctx),
        _ => {
            let second = blocks.iter().flatten().nth(1).copied().unwrap_or(at);
            ctx.error(
                second,
                "an invariant has exactly one of `check:`, `reconcile:` or `transitions:`; split it into two invariants",
            );
            None
        }
    };

    let spec = spec?;
    let compensate = match &raw.compensate {
        Some(c) => {
            let key = match &spec {
                InvariantSpec::Check(c) => &c.key,
                InvariantSpec::Reconcile(r) => &r.key,
                InvariantSpec::Transitions(t) => &t.key,
            };
            let kind = match &spec {
                InvariantSpec::Check(_) => "check",
                InvariantSpec::Reconcile(_) => "reconcile",
                InvariantSpec::Transitions(_) => "transitions",
            };
            compensation::build(c, kind, key, known, ctx)
        }
        None => Some(BTreeMap::new()),
    };

    let replay = match (&raw.replay, &spec) {
        (None, _) => Some(None),
        (Some(r), InvariantSpec::Reconcile(rec)) => {
            compensation::build_replay(r, raw.time_column.is_some(), &rec.key, known, ctx).map(Some)
        }
        (Some(r), _) => {
            ctx.error(
                r.referenced,
                "replay applies to reconcile invariants: it re-delivers upstream (left) events missing downstream",
            );
            None
        }
    };

    let slo = match &raw.slo {
        None => Some(None),
        Some(block) => build_slo(block, ctx).map(Some),
    };
    let runbook_url = match &raw.runbook_url {
        None => Some(None),
        Some(u) => ctx
            .parse("runbook_url", u, crate::domain::WebUrl::parse)
            .map(Some),
    };
    let mut labels = BTreeMap::new();
    let mut labels_ok = true;
    for (name, value) in &raw.labels {
        // Prometheus's rule for label names, so labels can travel to any receiver.
        if !crate::domain::is_label_name(name) {
            ctx.error(
                value.referenced,
                format!("labels: `{name}` is not a label name; use letters, digits and `_`, not starting with a digit (e.g. `team`, `service_tier`)"),
            );
            labels_ok = false;
        } else if crate::domain::RESERVED_LABELS.contains(&name.as_str()) {
            // Routes and silences match these; trueup sets them from the invariant.
            ctx.error(
                value.referenced,
                format!(
                    "labels: `{name}` is set by trueup from the invariant's own `{}:` (as are `invariant`, `severity` and `owner`); use another label name",
                    if name == "invariant" { "name" } else { name.as_str() }
                ),
            );
            labels_ok = false;
        } else {
            labels.insert(name.clone(), value.value.clone());
        }
    }

    Some(Invariant {
        name: name?,
        description: raw.description.map(|d| d.trim().to_owned()),
        owner: raw.owner,
        severity: severity?,
        schedule: schedule?,
        time_column: time_column?,
        grace: grace?,
        alert: alert?,
        notify: notify?,
        sample_limit,
        violation_budget: violation_budget?,
        spec,
        compensate: compensate?,
        replay: replay?,
        slo: slo?,
        runbook_url: runbook_url?,
        labels: labels_ok.then_some(labels)?,
        defined_at: (ctx.file.to_owned(), at.line()),
    })
}

/// The SLO window unless the invariant names one: the usual 30 days.
const DEFAULT_SLO_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

fn build_slo(block: &Spanned<raw::RawSlo>, ctx: &mut Ctx<'_>) -> Option<crate::domain::Objective> {
    let raw = &block.value;
    let target = match &raw.objective {
        Some(t) => match crate::domain::SloTarget::parse(&t.value.0) {
            Ok(target) => Some(target),
            Err(e) => {
                ctx.error(t.referenced, format!("slo.objective: {e}"));
                None
            }
        },
        None => {
            ctx.error(
                block.referenced,
                "slo needs an `objective`: the share of time with no violation open longer than `max_open`, e.g. `objective: 99.9%`",
            );
            None
        }
    };
    let max_open = match &raw.max_open {
        Some(d) => ctx.parse("slo.max_open", d, HumanDuration::parse),
        None => {
            ctx.error(
                block.referenced,
                "slo needs `max_open`: how long a violation may stay open before it counts against the objective, e.g. `max_open: 1h`",
            );
            None
        }
    };
    let window = match &raw.window {
        Some(d) => ctx.parse("slo.window", d, HumanDuration::parse).and_then(|w| {
            if w.as_std() < std::time::Duration::from_secs(3600) {
                ctx.error(
                    d.referenced,
                    format!("slo.window `{}` is shorter than an hour: an error budget is spent over days (30d is usual)", d.value),
                );
                None
            } else {
                Some(w)
            }
        }),
        None => Some(HumanDuration::from_std(DEFAULT_SLO_WINDOW)),
    };
    let (target, max_open, window) = (target?, max_open?, window?);
    if max_open.as_std() >= window.as_std() {
        ctx.error(
            block.referenced,
            format!("slo.max_open ({max_open}) must be shorter than slo.window ({window})"),
        );
        return None;
    }
    Some(crate::domain::Objective {
        target,
        max_open,
        window,
    })
}

fn build_spec(raw: &raw::RawInvariant, known: &Known, ctx: &mut Ctx<'_>) -> Option<InvariantSpec> {
    let sources = &known.sources;
    if let Some(c) = &raw.check {
        let key = ctx.columns("check.key", &c.value.key);
        let side = ctx.side(
            "check",
            &c.value.source,
            RawRead {
                query: c.value.query.as_ref(),
                request: c.value.request.as_ref(),
                stream: c.value.stream.as_ref(),
            },
            request::SideScope {
                key: key.as_deref(),
                window: false,
            },
            sources,
        );
        return Some(InvariantSpec::Check(CheckSpec {
            side: side?,
            key: key?,
        }));
    }
    if let Some(r) = &raw.reconcile {
        let (l, r_) = (&r.value.left.value, &r.value.right.value);
        let key = ctx.columns("reconcile.key", &r.value.key);
        let left = ctx.side(
            "reconcile.left",
            &l.source,
            RawRead {
                query: l.query.as_ref(),
                request: l.request.as_ref(),
                stream: l.stream.as_ref(),
            },
            request::SideScope {
                key: key.as_deref(),
                window: r.value.window.is_some(),
            },
            sources,
        );
        let right = ctx.side(
            "reconcile.right",
            &r_.source,
            RawRead {
                query: r_.query.as_ref(),
                request: r_.request.as_ref(),
                stream: r_.stream.as_ref(),
            },
            request::SideScope {
                key: key.as_deref(),
                window: r.value.window.is_some(),
            },
            sources,
        );
        let expect = match &r.value.expect {
            Some(e) => ctx.parse("reconcile.expect", e, |v| {
                Expect::parse(v)
                    .ok_or_else(|| format!("`{v}` is not an expectation; use {}", Expect::NAMES))
            }),
            None => Some(Expect::default()),
        };
        let compare = match &r.value.compare {
            Some(c) => ctx.columns("reconcile.compare", c).map(Some),
            None => Some(None),
        };
        let mode = match &r.value.mode {
            Some(m) => ctx.parse("reconcile.mode", m, |v| {
                ReconcileMode::parse(v).ok_or_else(|| {
                    format!(
                        "`{v}` is not a reconcile mode; use {}",
                        ReconcileMode::NAMES
                    )
                })
            }),
            None => Some(ReconcileMode::default()),
        };
        let incremental = match &r.value.incremental {
            Some(i) => ctx.incremental(i).map(Some),
            None => Some(None),
        };
        let segments = match &r.value.segments {
            None => Some(None),
            Some(n) if (2..=ReconcileSpec::MAX_SEGMENTS).contains(&n.value) => {
                if r.value.key.value.0.len() == 1 {
                    Some(Some(n.value as u32))
                } else {
                    ctx.error(
                        n.referenced,
                        "reconcile.segments: segments split one integer key, and this reconcile's key has several columns; leave `segments` out",
                    );
                    None
                }
            }
            Some(n) => {
                ctx.error(
                    n.referenced,
                    format!(
                        "reconcile.segments: {} is out of range; split a run into 2 to {} segments, or leave `segments` out to run it whole",
                        n.value,
                        ReconcileSpec::MAX_SEGMENTS
                    ),
                );
                None
            }
        };
        if let (Some(key), Some(Some(compare))) = (&key, &compare)
            && let Some(k) = compare.iter().find(|c| key.contains(c))
        {
            ctx.error(
                r.value
                    .compare
                    .as_ref()
                    .map_or(r.referenced, |c| c.referenced),
                format!("reconcile.compare: `{k}` is a key column; keys are matched, not compared"),
            );
            return None;
        }
        let window = match &r.value.window {
            None => Some(None),
            Some(w) => {
                let parsed = ctx.parse("reconcile.window", w, HumanDuration::parse);
                let refused = [
                    (
                        raw.time_column.is_none(),
                        "needs `time_column`: the column whose time says whether a row lies in the window (both sides return it)",
                    ),
                    (
                        r.value.segments.is_some(),
                        "and `segments` do not go together: segments split a key range, a window is a span of time",
                    ),
                    (
                        r.value.incremental.is_some(),
                        "and `incremental` do not go together: an incremental run already reads only what changed",
                    ),
                    (
                        mode == Some(ReconcileMode::Checksum),
                        "and `mode: checksum` do not go together: segment checksums summarise key ranges, not a span of time",
                    ),
                ];
                let mut ok = true;
                for (_, why) in refused.iter().filter(|(bad, _)| *bad) {
                    ctx.error(w.referenced, format!("reconcile.window {why}"));
                    ok = false;
                }
                match parsed {
                    Some(d) if d.as_std().is_zero() => {
                        ctx.error(w.referenced, "reconcile.window must be longer than zero");
                        None
                    }
                    Some(d) if ok => Some(Some(d)),
                    _ => None,
                }
            }
        };
        let api_side = [(&left, &l.source), (&right, &r_.source)]
            .into_iter()
            .find(|(side, _)| {
                side.as_ref()
                    .is_some_and(|s| !matches!(s.query, Read::Sql(_)))
            })
            .map(|(_, source)| source.value.clone());
        if let Some(api) = api_side {
            // What a database computes or filters for these, an API cannot.
            let refused = [
                (
                    r.value
                        .mode
                        .as_ref()
                        .filter(|_| mode == Some(ReconcileMode::Checksum))
                        .map(|m| m.referenced),
                    "reconcile.mode: checksum",
                    "segment checksums are computed by databases; an API's items or a stream's messages are streamed (`mode: auto` or `stream`)",
                ),
                (
                    r.value.segments.as_ref().map(|n| n.referenced),
                    "reconcile.segments",
                    "segments split a database's key range; an API or a stream is read in one pass",
                ),
                (
                    r.value.incremental.as_ref().map(|i| i.referenced),
                    "reconcile.incremental",
                    "an incremental run asks a database for the rows changed since its watermark",
                ),
            ];
            let mut refused_any = false;
            for (given, what, why) in refused {
                if let Some(at) = given {
                    ctx.error(
                        at,
                        format!("{what} cannot be used with source `{api}`, which is not a database: {why}"),
                    );
                    refused_any = true;
                }
            }
            if refused_any {
                return None;
            }
        }
        if l.source.value == r_.source.value
            && SourceName::parse(&r_.source.value)
                .is_ok_and(|name| known.single_connection.contains(&name))
        {
            ctx.error(
                r_.source.referenced,
                format!(
                    "both sides read source `{s}`, whose pool_size is 1: a reconcile reads its two sides at once, each on a connection of its own; set `pool_size: 2` or more on source `{s}`",
                    s = r_.source.value
                ),
            );
            return None;
        }
        return Some(InvariantSpec::Reconcile(ReconcileSpec {
            left: left?,
            right: right?,
            key: key?,
            expect: expect?,
            compare: compare?,
            mode: mode?,
            incremental: incremental?,
            segments: segments?,
            window: window?,
        }));
    }
    if let Some(t) = &raw.transitions {
        let t = &t.value;
        let key = ctx.columns("transitions.key", &t.key);
        let side = ctx.side(
            "transitions",
            &t.source,
            RawRead {
                query: t.query.as_ref(),
                request: t.request.as_ref(),
                stream: t.stream.as_ref(),
            },
            request::SideScope {
                key: key.as_deref(),
                window: false,
            },
            sources,
        );
        let state = match &t.state {
            Some(s) => ctx.parse("transitions.state", s, ColumnName::parse),
            None => ColumnName::parse("state").ok(),
        };
        let at = match &t.at {
            Some(s) => ctx.parse("transitions.at", s, ColumnName::parse),
            None => ColumnName::parse("at").ok(),
        };
        let allowed: BTreeMap<String, std::collections::BTreeSet<String>> = t
            .allowed
            .value
            .iter()
            .map(|(from, to)| (from.clone(), to.0.iter().cloned().collect()))
            .collect();
        if allowed.is_empty() {
            ctx.error(
                t.allowed.referenced,
                "transitions.allowed is empty; map each state to the states it may move to, e.g. `pending: [authorized, canceled]`",
            );
            return None;
        }
        let initial = t.initial.as_ref().map(|i| {
            i.value
                .0
                .iter()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
        });
        let spec = TransitionsSpec {
            side: side?,
            key: key?,
            state: state?,
            at: at?,
            allowed,
            initial,
        };
        if let (Some(init), Some(raw_init)) = (&spec.initial, &t.initial)
            && let Some(unknown) = init.iter().find(|s| !spec.is_known_state(s))
        {
            ctx.error(
                    raw_init.referenced,
                    format!("transitions.initial: `{unknown}` does not appear in `allowed`; add it there or fix the spelling"),
                );
            return None;
        }
        return Some(InvariantSpec::Transitions(spec));
    }
    None
}

/// The closest candidate, when it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests;
