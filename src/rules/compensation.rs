//! The `compensate:` block of an invariant: per violation kind, one `sql`, `http`, `nats`,
//! `redis` or `manual` action template. SQL templates are parsed with the target database's grammar
//! (`sqlparser`), so `validate` refuses a placeholder that stands where a table or column name
//! goes, sits inside a quoted string, or a statement that is not one INSERT, UPDATE or DELETE.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use serde_saphyr::Spanned;

use super::raw::{RawCompensate, RawHttp, RawNats, RawRedis, RawReplay, RawSql};
use super::{Ctx, Known, TargetInfo};
use crate::config::SourceKind;
use crate::domain::{
    Compensation, HttpCompensation, JsonTemplate, NatsCompensation, ParamStyle, Placeholder,
    RedisCompensation, SqlCompensation, TargetName, Template, ViolationKind,
};

pub const DEFAULT_REPLAY_WINDOW_HOURS: u64 = 24;
pub const DEFAULT_REPLAY_ATTEMPTS: u32 = 3;

/// The `replay:` block of a reconcile invariant.
pub(super) fn build_replay(
    raw: &Spanned<RawReplay>,
    has_time_column: bool,
    key: &[crate::domain::ColumnName],
    known: &Known,
    ctx: &mut Ctx<'_>,
) -> Option<crate::domain::ReplaySpec> {
    let r = &raw.value;
    if !has_time_column {
        ctx.error(
            raw.referenced,
            "replay needs `time_column`: the upstream event's time, which selects the replay window and orders the deliveries",
        );
        return None;
    }
    let deliver = build_action(
        "replay",
        ViolationKind::Missing,
        RawChoice {
            sql: r.sql.as_ref(),
            http: r.http.as_ref(),
            nats: r.nats.as_ref(),
            redis: r.redis.as_ref(),
            manual: None,
        },
        raw.referenced,
        key,
        known,
        ctx,
    )?;
    let idempotency_key = match &r.idempotency_key {
        Some(t) => {
            let template = template("replay.idempotency_key", t, ctx)?;
            if let Some(p) = template
                .placeholders()
                .find(|p| p.scope.unavailable_for(ViolationKind::Missing).is_some())
            {
                ctx.error(
                    t.referenced,
                    format!("replay.idempotency_key: {p}: use key., left. or violation."),
                );
                return None;
            }
            Some(template)
        }
        None => None,
    };
    let partition = match &r.partition {
        Some(p) => Some(ctx.parse("replay.partition", p, crate::domain::ColumnName::parse)?),
        None => None,
    };
    let max_window = match &r.max_window {
        Some(w) => ctx.parse("replay.max_window", w, crate::domain::HumanDuration::parse)?,
        None => crate::domain::HumanDuration::from_std(std::time::Duration::from_secs(
            DEFAULT_REPLAY_WINDOW_HOURS * 3600,
        )),
    };
    let attempts = match &r.attempts {
        Some(a) if a.value == 0 || a.value > 100 => {
            ctx.error(
                a.referenced,
                "replay.attempts: between 1 and 100 deliveries before an event is parked",
            );
            return None;
        }
        Some(a) => a.value,
        None => DEFAULT_REPLAY_ATTEMPTS,
    };
    let processed = match &r.processed {
        Some(p) => Some(ctx.side(
            "replay.processed",
            &p.value.source,
            super::RawRead {
                query: p.value.query.as_ref(),
                request: p.value.request.as_ref(),
                stream: p.value.stream.as_ref(),
            },
            super::request::SideScope {
                key: Some(key),
                window: false,
            },
            &known.sources,
        )?),
        None => None,
    };
    Some(crate::domain::ReplaySpec {
        deliver,
        idempotency_key,
        partition,
        max_window,
        attempts,
        processed,
    })
}

/// Kinds an invariant of this type can report.
fn possible_kinds(invariant_kind: &str) -> &'static [ViolationKind] {
    use ViolationKind::*;
    match invariant_kind {
        "check" => &[Check],
        "transitions" => &[Transition],
        _ => &[Missing, Extra, Duplicate, Mismatch],
    }
}

pub(super) fn build(
    raw: &Spanned<RawCompensate>,
    invariant_kind: &str,
    key: &[crate::domain::ColumnName],
    known: &Known,
    ctx: &mut Ctx<'_>,
) -> Option<BTreeMap<ViolationKind, Compensation>> {
    let mut out = BTreeMap::new();
    let mut ok = true;
    let possible = possible_kinds(invariant_kind);
    for (kind_name, action) in &raw.value {
        let Some(kind) = ViolationKind::parse(kind_name).filter(|k| possible.contains(k)) else {
            let names: Vec<&str> = possible.iter().map(|k| k.as_str()).collect();
            ctx.error(
                action.referenced,
                format!(
                    "compensate.{kind_name}: a {invariant_kind} invariant reports {}; compensate those",
                    names.join(", ")
                ),
            );
            ok = false;
            continue;
        };
        let field = format!("compensate.{kind_name}");
        let a = &action.value;
        match build_action(
            &field,
            kind,
            RawChoice {
                sql: a.sql.as_ref(),
                http: a.http.as_ref(),
                nats: a.nats.as_ref(),
                redis: a.redis.as_ref(),
                manual: a.manual.as_ref(),
            },
            action.referenced,
            key,
            known,
            ctx,
        ) {
            Some(c) => {
                out.insert(kind, c);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// The action kinds an action block may give (exactly one of them).
struct RawChoice<'a> {
    sql: Option<&'a Spanned<RawSql>>,
    http: Option<&'a Spanned<RawHttp>>,
    nats: Option<&'a Spanned<RawNats>>,
    redis: Option<&'a Spanned<RawRedis>>,
    manual: Option<&'a Spanned<String>>,
}

fn build_action(
    field: &str,
    kind: ViolationKind,
    choice: RawChoice<'_>,
    at: serde_saphyr::Location,
    key: &[crate::domain::ColumnName],
    known: &Known,
    ctx: &mut Ctx<'_>,
) -> Option<Compensation> {
    let RawChoice {
        sql: raw_sql,
        http: raw_http,
        nats: raw_nats,
        redis: raw_redis,
        manual: raw_manual,
    } = choice;
    let count = [
        raw_sql.is_some(),
        raw_http.is_some(),
        raw_nats.is_some(),
        raw_redis.is_some(),
        raw_manual.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count != 1 {
        let choices = if field == "replay" {
            "`sql:`, `http:`, `nats:` or `redis:`"
        } else {
            "`sql:`, `http:`, `nats:`, `redis:` or `manual:`"
        };
        ctx.error(at, format!("{field}: give exactly one of {choices}"));
        return None;
    }
    let compensation = if let Some(sql) = raw_sql {
        let (target, info) = typed_target(
            &format!("{field}.sql"),
            &sql.value.target,
            |i| matches!(i, TargetInfo::Sql(_)),
            "a SQL action needs a target with `url:` naming a database",
            known,
            ctx,
        )?;
        let TargetInfo::Sql(engine) = info else {
            return None;
        };
        let engine = &engine;
        let template = template(&format!("{field}.sql.statement"), &sql.value.statement, ctx)?;
        let style = match engine {
            SourceKind::Postgres => ParamStyle::Dollar,
            SourceKind::MySql | SourceKind::Sqlite => ParamStyle::Question,
        };
        let compensation = SqlCompensation {
            target,
            template,
            style,
        };
        if let Err(msg) = check_statement(&compensation, *engine) {
            ctx.error(
                sql.value.statement.referenced,
                format!("{field}.sql.statement: {msg}"),
            );
            return None;
        }
        Compensation::Sql(compensation)
    } else if let Some(http) = raw_http {
        let h = &http.value;
        let (target, _) = typed_target(
            &format!("{field}.http"),
            &h.target,
            |i| i == TargetInfo::Http,
            "an HTTP action needs a target with `base_url:`",
            known,
            ctx,
        )?;
        let method = match &h.method {
            Some(m) => {
                let upper = m.value.to_ascii_uppercase();
                if !["POST", "PUT", "PATCH", "DELETE"].contains(&upper.as_str()) {
                    ctx.error(
                        m.referenced,
                        format!("{field}.http.method: `{}` does not change anything; use POST, PUT, PATCH or DELETE", m.value),
                    );
                    return None;
                }
                upper
            }
            None => "POST".to_owned(),
        };
        let path = template(&format!("{field}.http.path"), &h.path, ctx)?;
        if path.segments().iter().any(|s| {
            matches!(s, crate::domain::Segment::Text(t) if t.contains("://") || t.contains(".."))
        }) {
            ctx.error(
                h.path.referenced,
                format!("{field}.http.path: write a path relative to the target's base_url, without `://` or `..`"),
            );
            return None;
        }
        let headers = headers(
            &format!("{field}.http.headers"),
            &h.headers,
            "Idempotency-Key",
            ctx,
        )?;
        let body = match &h.body {
            Some(b) => Some(json_template(
                &format!("{field}.http.body"),
                &b.value,
                b.referenced,
                ctx,
            )?),
            None => None,
        };
        Compensation::Http(HttpCompensation {
            target,
            method,
            path,
            headers,
            body,
        })
    } else if let Some(nats) = raw_nats {
        let n = &nats.value;
        let (target, _) = typed_target(
            &format!("{field}.nats"),
            &n.target,
            |i| i == TargetInfo::Nats,
            "a NATS action needs a target with `url: nats://…` and `stream:`",
            known,
            ctx,
        )?;
        let subject = template(&format!("{field}.nats.subject"), &n.subject, ctx)?;
        if let Err(why) = publishable_subject(&subject) {
            ctx.error(
                n.subject.referenced,
                format!("{field}.nats.subject: `{}` {why}", n.subject.value),
            );
            return None;
        }
        let headers = headers(&format!("{field}.nats.headers"), &n.headers, "Nats-", ctx)?;
        let body = json_template(
            &format!("{field}.nats.body"),
            &n.body.value,
            n.body.referenced,
            ctx,
        )?;
        Compensation::Nats(NatsCompensation {
            target,
            subject,
            headers,
            body,
        })
    } else if let Some(redis) = raw_redis {
        let r = &redis.value;
        let (target, _) = typed_target(
            &format!("{field}.redis"),
            &r.target,
            |i| i == TargetInfo::Redis,
            "a Redis action needs a target with `url: redis://…`",
            known,
            ctx,
        )?;
        if r.stream.value.is_empty()
            || r.stream.value.contains("{{")
            || r.stream
                .value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            ctx.error(
                r.stream.referenced,
                format!("{field}.redis.stream: `{}` is not a stream key: write the key itself, without spaces or placeholders", r.stream.value),
            );
            return None;
        }
        if r.fields.value.is_empty() {
            ctx.error(
                r.fields.referenced,
                format!("{field}.redis.fields: an entry needs at least one field, like `{{event_id: \"{{{{key.id}}}}\"}}`"),
            );
            return None;
        }
        let mut fields = Vec::new();
        for (name, value) in &r.fields.value {
            fields.push((
                name.clone(),
                json_template(
                    &format!("{field}.redis.fields.{name}"),
                    value,
                    r.fields.referenced,
                    ctx,
                )?,
            ));
        }
        Compensation::Redis(RedisCompensation {
            target,
            stream: r.stream.value.clone(),
            fields,
        })
    } else {
        let manual = raw_manual?;
        Compensation::Manual(template(&format!("{field}.manual"), manual, ctx)?)
    };
    // Each placeholder must exist for this kind of violation.
    let mut ok = true;
    for p in compensation.placeholders() {
        if let Some(reason) = p.scope.unavailable_for(kind) {
            ctx.error(at, format!("{field}: {p}: {reason}"));
            ok = false;
        } else if p.scope == crate::domain::Scope::Key
            && !key
                .iter()
                .any(|k| k.as_str().eq_ignore_ascii_case(&p.field))
        {
            let names: Vec<&str> = key.iter().map(|k| k.as_str()).collect();
            ctx.error(
                at,
                format!(
                    "{field}: {p}: `{}` is not a key column (the key is: {})",
                    p.field,
                    names.join(", ")
                ),
            );
            ok = false;
        }
    }
    ok.then_some(compensation)
}

/// Whether `subject` can be published to as written: dot-separated tokens, each literal one
/// a subject token, each placeholder a whole token (`orders.{{key.id}}`, never
/// `orders.id-{{key.id}}`, whose value could not be checked as one token), and not a system
/// subject (`$JS.API…` would be a JetStream command, `_INBOX…` someone's reply).
fn publishable_subject(subject: &Template) -> Result<(), &'static str> {
    use crate::domain::Segment;
    let mut tokens: Vec<Option<String>> = vec![Some(String::new())];
    let mut placeholder_in_token = false;
    for s in subject.segments() {
        match s {
            Segment::Text(t) => {
                for (i, part) in t.split('.').enumerate() {
                    if i > 0 {
                        tokens.push(Some(String::new()));
                        placeholder_in_token = false;
                    }
                    if placeholder_in_token && !part.is_empty() {
                        return Err(
                            "puts a placeholder beside text in one token; make each placeholder a whole token, like `orders.{{key.id}}`",
                        );
                    }
                    if let Some(Some(token)) = tokens.last_mut() {
                        token.push_str(part);
                    }
                }
            }
            Segment::Value(_) => {
                let last = tokens.last_mut().expect("one token at least");
                if placeholder_in_token || last.as_ref().is_some_and(|t| !t.is_empty()) {
                    return Err(
                        "puts a placeholder beside text in one token; make each placeholder a whole token, like `orders.{{key.id}}`",
                    );
                }
                *last = None;
                placeholder_in_token = true;
            }
        }
    }
    for token in tokens.iter().flatten() {
        if !crate::domain::is_subject_token(token) {
            return Err(
                "is not a subject to publish to: dot-separated tokens, none empty, without wildcards (`*`, `>`), spaces or control characters",
            );
        }
    }
    if let Some(Some(first)) = tokens.first()
        && (first.starts_with('$') || first == "_INBOX")
    {
        return Err(
            "is a system subject (`$…` commands the server, `_INBOX` carries replies); publish to a subject of the target's stream",
        );
    }
    Ok(())
}

/// The target `raw` names, when `fits` its kind; otherwise an error saying what it is and
/// what the action `needs`.
fn typed_target(
    field: &str,
    raw: &Spanned<String>,
    fits: impl Fn(TargetInfo) -> bool,
    needs: &str,
    known: &Known,
    ctx: &mut Ctx<'_>,
) -> Option<(TargetName, TargetInfo)> {
    let name = target(field, raw, known, ctx)?;
    let info = *known.targets.get(&name)?;
    if !fits(info) {
        ctx.error(
            raw.referenced,
            format!("{field}.target: `{name}` is {}; {needs}", info.described()),
        );
        return None;
    }
    Some((name, info))
}

/// Headers of an HTTP request or NATS message: valid names, each a template, none named
/// `reserved` or, when it ends in `-`, starting with it (any case): trueup sets those itself
/// (`Idempotency-Key`), or the server acts on them (`Nats-Rollup` purges, `Nats-Expected-…`
/// refuses).
fn headers(
    field: &str,
    raw: &BTreeMap<String, Spanned<String>>,
    reserved: &str,
    ctx: &mut Ctx<'_>,
) -> Option<Vec<(String, Template)>> {
    let mut out = Vec::new();
    for (name, value) in raw {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            ctx.error(
                value.referenced,
                format!("{field}: `{name}` is not a header name"),
            );
            return None;
        }
        let lower = name.to_ascii_lowercase();
        let reserved_lower = reserved.to_ascii_lowercase();
        if reserved.ends_with('-') && lower.starts_with(&reserved_lower) {
            ctx.error(
                value.referenced,
                format!(
                    "{field}: `{name}`: headers starting with {reserved} are for trueup (Nats-Msg-Id, one stable key per action) and the server, which acts on them; remove it"
                ),
            );
            return None;
        }
        if lower == reserved_lower {
            ctx.error(
                value.referenced,
                format!(
                    "{field}: trueup sets {reserved} itself (one stable key per action); remove it"
                ),
            );
            return None;
        }
        out.push((
            name.clone(),
            template(&format!("{field}.{name}"), value, ctx)?,
        ));
    }
    Some(out)
}

fn json_template(
    field: &str,
    raw: &serde_json::Value,
    at: serde_saphyr::Location,
    ctx: &mut Ctx<'_>,
) -> Option<JsonTemplate> {
    match JsonTemplate::parse(raw) {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.error(at, format!("{field}: {e}"));
            None
        }
    }
}

fn target(
    field: &str,
    raw: &Spanned<String>,
    known: &Known,
    ctx: &mut Ctx<'_>,
) -> Option<TargetName> {
    let name = ctx.parse(&format!("{field}.target"), raw, TargetName::parse)?;
    if known.targets.contains_key(&name) {
        return Some(name);
    }
    let names: Vec<&str> = known.targets.keys().map(TargetName::as_str).collect();
    let hint = super::suggest(name.as_str(), names.iter().copied())
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    ctx.error(
        raw.referenced,
        format!(
            "{field}.target: unknown target `{name}`{hint} ({}; targets are declared under `targets:` in trueup.yaml)",
            if names.is_empty() { "none are configured".to_owned() } else { format!("configured: {}", names.join(", ")) }
        ),
    );
    None
}

fn template(field: &str, raw: &Spanned<String>, ctx: &mut Ctx<'_>) -> Option<Template> {
    match Template::parse(&raw.value) {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.error(raw.referenced, format!("{field}: {e}"));
            None
        }
    }
}

/// Parses the statement with the target's grammar and checks that every placeholder became a
/// bound value.
pub fn check_statement(sql: &SqlCompensation, engine: SourceKind) -> Result<(), String> {
    use sqlparser::ast::{Expr, Statement, Value};
    use sqlparser::parser::Parser;

    let dialect = super::query::dialect(engine);
    let placeholders: Vec<&Placeholder> = sql.template.placeholders().collect();
    let statements = match Parser::parse_sql(dialect, &sql.statement()) {
        Ok(s) => s,
        Err(e) => {
            // Does it parse when each placeholder is a name? Then one stands where a name goes.
            let mut as_names = String::new();
            let mut n = 0;
            for s in sql.template.segments() {
                match s {
                    crate::domain::Segment::Text(t) => as_names.push_str(t),
                    crate::domain::Segment::Value(_) => {
                        n += 1;
                        as_names.push_str(&format!("trueup_name_{n}"));
                    }
                }
            }
            if Parser::parse_sql(dialect, &as_names).is_ok() && n > 0 {
                return Err(
                    "a placeholder stands where a table or column name goes; placeholders are values only (bound parameters), so write names literally".into(),
                );
            }
            return Err(format!(
                "not valid {} SQL: {e}",
                match engine {
                    SourceKind::Postgres => "PostgreSQL",
                    SourceKind::MySql => "MySQL",
                    SourceKind::Sqlite => "SQLite",
                }
            ));
        }
    };
    let [statement] = statements.as_slice() else {
        return Err(format!(
            "holds {} statements; a compensation is exactly one INSERT, UPDATE or DELETE",
            statements.len()
        ));
    };
    if !matches!(
        statement,
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
    ) {
        return Err("a compensation is one INSERT, UPDATE or DELETE; other statements (DDL, SELECT, transaction control) are refused".into());
    }
    // `$N` (PostgreSQL) says which placeholder is bound; `?` only how many are.
    let mut bound = std::collections::BTreeSet::new();
    let mut anonymous = 0;
    let _ = sqlparser::ast::visit_expressions(statement, |e: &Expr| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
        {
            match p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => {
                    bound.insert(n);
                }
                None => anonymous += 1,
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let unbound: Vec<String> = match sql.style {
        ParamStyle::Dollar => placeholders
            .iter()
            .enumerate()
            .filter(|(i, _)| !bound.contains(&(i + 1)))
            .map(|(_, p)| p.to_string())
            .collect(),
        ParamStyle::Question if anonymous < placeholders.len() => {
            vec![format!(
                "one of {}",
                placeholders
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )]
        }
        ParamStyle::Question => Vec::new(),
    };
    match unbound.first() {
        Some(p) => Err(format!(
            "{p} is not in a value position (it stands for a name, or sits inside quotes); placeholders are bound values: write `= {{{{scope.field}}}}`, not a quoted string or a name"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(text: &str, engine: SourceKind) -> SqlCompensation {
        SqlCompensation {
            target: TargetName::parse("t").unwrap(),
            template: Template::parse(text).unwrap(),
            style: match engine {
                SourceKind::Postgres => ParamStyle::Dollar,
                _ => ParamStyle::Question,
            },
        }
    }

    #[test]
    fn values_in_value_positions_pass_on_every_engine() {
        for engine in [SourceKind::Postgres, SourceKind::MySql, SourceKind::Sqlite] {
            for ok in [
                "INSERT INTO ledger (payment_id, amount) VALUES ({{key.id}}, {{left.amount}})",
                "UPDATE ledger SET amount = {{left.amount}} WHERE payment_id = {{key.id}}",
                "DELETE FROM ledger WHERE payment_id = {{key.id}} AND amount = {{right.amount}}",
                "INSERT INTO t (a) SELECT {{key.id}} WHERE NOT EXISTS (SELECT 1 FROM t WHERE a = {{key.id}})",
            ] {
                assert_eq!(
                    check_statement(&sql(ok, engine), engine),
                    Ok(()),
                    "{engine}: {ok}"
                );
            }
        }
    }

    #[test]
    fn a_placeholder_in_a_name_position_is_refused() {
        for engine in [SourceKind::Postgres, SourceKind::MySql, SourceKind::Sqlite] {
            for bad in [
                "DELETE FROM {{row.table}} WHERE id = {{key.id}}",
                "UPDATE ledger SET {{row.column}} = 1 WHERE id = {{key.id}}",
                "INSERT INTO ledger ({{row.column}}) VALUES (1)",
                "UPDATE ledger SET amount = 1 WHERE ledger.{{row.column}} = 2",
                "UPDATE ledger SET note = 'paid {{key.id}}' WHERE id = {{key.id}}",
            ] {
                let err = check_statement(&sql(bad, engine), engine).unwrap_err();
                assert!(
                    err.contains("name") || err.contains("value position"),
                    "{engine}: {bad}: {err}"
                );
            }
        }
    }

    #[test]
    fn only_one_data_changing_statement_is_accepted() {
        let err = check_statement(
            &sql(
                "DELETE FROM a WHERE id = {{key.id}}; DROP TABLE a",
                SourceKind::Postgres,
            ),
            SourceKind::Postgres,
        )
        .unwrap_err();
        assert!(err.contains("2 statements"), "{err}");
        let err = check_statement(
            &sql("DROP TABLE a", SourceKind::Postgres),
            SourceKind::Postgres,
        )
        .unwrap_err();
        assert!(err.contains("INSERT, UPDATE or DELETE"), "{err}");
        let err = check_statement(&sql("SELEC 1", SourceKind::Postgres), SourceKind::Postgres)
            .unwrap_err();
        assert!(err.contains("not valid PostgreSQL SQL"), "{err}");
    }
}
