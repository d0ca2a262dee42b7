//! The `compensate:` block of an invariant: per violation kind, one `sql`, `http` or `manual`
//! action template. SQL templates are parsed with the target database's grammar
//! (`sqlparser`), so `validate` refuses a placeholder that stands where a table or column name
//! goes, sits inside a quoted string, or a statement that is not one INSERT, UPDATE or DELETE.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use serde_saphyr::Spanned;

use super::raw::{RawCompensate, RawHttp, RawReplay, RawSql};
use super::{Ctx, Known, TargetInfo};
use crate::config::SourceKind;
use crate::domain::{
    Compensation, HttpCompensation, JsonTemplate, ParamStyle, Placeholder, SqlCompensation,
    TargetName, Template, ViolationKind,
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
        (r.sql.as_ref(), r.http.as_ref(), None),
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
            (a.sql.as_ref(), a.http.as_ref(), a.manual.as_ref()),
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

type RawChoice<'a> = (
    Option<&'a Spanned<RawSql>>,
    Option<&'a Spanned<RawHttp>>,
    Option<&'a Spanned<String>>,
);

fn build_action(
    field: &str,
    kind: ViolationKind,
    (raw_sql, raw_http, raw_manual): RawChoice<'_>,
    at: serde_saphyr::Location,
    key: &[crate::domain::ColumnName],
    known: &Known,
    ctx: &mut Ctx<'_>,
) -> Option<Compensation> {
    let count = [raw_sql.is_some(), raw_http.is_some(), raw_manual.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if count != 1 {
        let choices = if field == "replay" {
            "`sql:` or `http:`"
        } else {
            "`sql:`, `http:` or `manual:`"
        };
        ctx.error(at, format!("{field}: give exactly one of {choices}"));
        return None;
    }
    let compensation = if let Some(sql) = raw_sql {
        let target = target(field, &sql.value.target, known, ctx)?;
        let Some(TargetInfo::Sql(engine)) = known.targets.get(&target) else {
            ctx.error(
                sql.value.target.referenced,
                format!("{field}.sql.target: `{target}` is an HTTP target; a SQL action needs a target with `url:`"),
            );
            return None;
        };
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
        let target = target(field, &h.target, known, ctx)?;
        if !matches!(known.targets.get(&target), Some(TargetInfo::Http)) {
            ctx.error(
                h.target.referenced,
                format!("{field}.http.target: `{target}` is a SQL target; an HTTP action needs a target with `base_url:`"),
            );
            return None;
        }
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
        let mut headers = Vec::new();
        for (name, value) in &h.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                ctx.error(
                    value.referenced,
                    format!("{field}.http.headers: `{name}` is not a header name"),
                );
                return None;
            }
            if name.eq_ignore_ascii_case("idempotency-key") {
                ctx.error(
                    value.referenced,
                    format!("{field}.http.headers: trueup sets Idempotency-Key itself (one stable key per action); remove it"),
                );
                return None;
            }
            headers.push((
                name.clone(),
                template(&format!("{field}.http.headers.{name}"), value, ctx)?,
            ));
        }
        let body = match &h.body {
            Some(b) => match JsonTemplate::parse(&b.value) {
                Ok(t) => Some(t),
                Err(e) => {
                    ctx.error(b.referenced, format!("{field}.http.body: {e}"));
                    return None;
                }
            },
            None => None,
        };
        Compensation::Http(HttpCompensation {
            target,
            method,
            path,
            headers,
            body,
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
