//! Compensations: how an invariant says to repair each kind of violation, and the concrete
//! action one violation turns into.
//!
//! A template is text with `{{scope.field}}` placeholders. Scopes: `key` (the violation's key
//! columns), `left` / `right` (the rows a reconcile saw), `row` (the row a check returned) and
//! `violation` (`kind`, `fingerprint`, `invariant`). How a value enters the action depends on
//! where it goes, and it is never spliced into code:
//! - SQL: each placeholder becomes a bound parameter (`$1`… or `?`), never text;
//! - HTTP path: the value is percent-encoded as one path segment;
//! - HTTP body: a string that is exactly one placeholder takes the value with its JSON type;
//!   anything else is interpolated as text;
//! - headers and manual instructions: interpolated as text;
//! - NATS subject: the value must be one subject token (no `.`, space or wildcard);
//! - NATS body and Redis fields: as an HTTP body (a Redis field that is not a string is stored
//!   as JSON text).

use std::collections::BTreeMap;

use super::TargetName;
use super::template::{
    JsonTemplate, Placeholder, RenderError, Segment, Template, ViolationContext,
};

/// How a SQL target writes positional parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamStyle {
    /// `$1`, `$2`, … (PostgreSQL).
    Dollar,
    /// `?` (MySQL, SQLite).
    Question,
}

/// One parameterized statement on a writable SQL target.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCompensation {
    pub target: TargetName,
    pub template: Template,
    pub style: ParamStyle,
}

impl SqlCompensation {
    /// The statement as sent, with a parameter marker wherever the template has a placeholder.
    pub fn statement(&self) -> String {
        let mut out = String::new();
        let mut n = 0;
        for s in self.template.segments() {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Value(_) => {
                    n += 1;
                    match self.style {
                        ParamStyle::Dollar => out.push_str(&format!("${n}")),
                        ParamStyle::Question => out.push('?'),
                    }
                }
            }
        }
        out.trim().trim_end_matches(';').trim_end().to_owned()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCompensation {
    pub target: TargetName,
    pub method: String,
    /// Relative to the target's base URL.
    pub path: Template,
    pub headers: Vec<(String, Template)>,
    pub body: Option<JsonTemplate>,
}

/// One message published to a JetStream subject.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsCompensation {
    pub target: TargetName,
    pub subject: Template,
    pub headers: Vec<(String, Template)>,
    /// The message's JSON payload.
    pub body: JsonTemplate,
}

/// One entry appended to a Redis stream.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisCompensation {
    pub target: TargetName,
    /// The stream's key.
    pub stream: String,
    /// The entry's fields, in order.
    pub fields: Vec<(String, JsonTemplate)>,
}

/// How to compensate one kind of violation.
#[derive(Debug, Clone, PartialEq)]
pub enum Compensation {
    Sql(SqlCompensation),
    Http(HttpCompensation),
    Nats(NatsCompensation),
    Redis(RedisCompensation),
    /// A step for a person; tracked, never executed.
    Manual(Template),
}

impl Compensation {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Compensation::Sql(_) => "sql",
            Compensation::Http(_) => "http",
            Compensation::Nats(_) => "nats",
            Compensation::Redis(_) => "redis",
            Compensation::Manual(_) => "manual",
        }
    }

    pub fn placeholders(&self) -> Vec<&Placeholder> {
        match self {
            Compensation::Sql(s) => s.template.placeholders().collect(),
            Compensation::Http(h) => {
                let mut all: Vec<&Placeholder> = h.path.placeholders().collect();
                for (_, v) in &h.headers {
                    all.extend(v.placeholders());
                }
                if let Some(b) = &h.body {
                    all.extend(b.placeholders());
                }
                all
            }
            Compensation::Nats(n) => {
                let mut all: Vec<&Placeholder> = n.subject.placeholders().collect();
                for (_, v) in &n.headers {
                    all.extend(v.placeholders());
                }
                all.extend(n.body.placeholders());
                all
            }
            Compensation::Redis(r) => r
                .fields
                .iter()
                .flat_map(|(_, v)| v.placeholders())
                .collect(),
            Compensation::Manual(t) => t.placeholders().collect(),
        }
    }

    /// The concrete action for one violation. `base_url` gives an HTTP target's base URL
    /// (ending in `/`).
    pub fn render(
        &self,
        ctx: &ViolationContext<'_>,
        base_url: impl Fn(&TargetName) -> Option<String>,
    ) -> Result<ActionSpec, RenderError> {
        Ok(match self {
            Compensation::Sql(s) => ActionSpec::Sql {
                target: s.target.to_string(),
                statement: s.statement(),
                params: s
                    .template
                    .placeholders()
                    .map(|p| ctx.lookup(p))
                    .collect::<Result<_, _>>()?,
            },
            Compensation::Http(h) => {
                let base = base_url(&h.target).ok_or_else(|| RenderError::UnknownTarget {
                    target: h.target.to_string(),
                })?;
                let path = h.path.render_path(ctx)?;
                let mut headers = BTreeMap::new();
                for (name, value) in &h.headers {
                    headers.insert(name.clone(), value.render_text(ctx)?);
                }
                ActionSpec::Http {
                    target: h.target.to_string(),
                    method: h.method.clone(),
                    url: format!("{base}{}", path.trim_start_matches('/')),
                    headers,
                    body: h.body.as_ref().map(|b| b.render(ctx)).transpose()?,
                }
            }
            Compensation::Nats(n) => {
                let mut headers = BTreeMap::new();
                for (name, value) in &n.headers {
                    let text = value.render_text(ctx)?;
                    // NATS writes headers as text lines: a line break would start a header of
                    // the value's choosing.
                    if text.chars().any(|c| c.is_control()) {
                        return Err(RenderError::Unfit {
                            what: format!("header {name}"),
                            reason: format!(
                                "`{}` holds a line break or control character, which a NATS header cannot carry",
                                text.escape_debug()
                            ),
                        });
                    }
                    headers.insert(name.clone(), text);
                }
                ActionSpec::Nats {
                    target: n.target.to_string(),
                    subject: render_subject(&n.subject, ctx)?,
                    headers,
                    body: n.body.render(ctx)?,
                }
            }
            Compensation::Redis(r) => ActionSpec::Redis {
                target: r.target.to_string(),
                stream: r.stream.clone(),
                fields: r
                    .fields
                    .iter()
                    .map(|(name, v)| Ok((name.clone(), super::json_text(&v.render(ctx)?))))
                    .collect::<Result<_, RenderError>>()?,
            },
            Compensation::Manual(t) => ActionSpec::Manual {
                instructions: t.render_text(ctx)?,
            },
        })
    }
}

/// A subject with each placeholder's value as one token: a value with a `.` would add
/// tokens (and land on another subject), a space or wildcard would not be a subject at all.
fn render_subject(subject: &Template, ctx: &ViolationContext<'_>) -> Result<String, RenderError> {
    let mut out = String::new();
    for s in subject.segments() {
        match s {
            Segment::Text(t) => out.push_str(t),
            Segment::Value(p) => {
                let text = super::json_text(&ctx.lookup(p)?);
                if !is_subject_token(&text) {
                    return Err(RenderError::Unfit {
                        what: p.to_string(),
                        reason: format!(
                            "`{text}` cannot be one NATS subject token (empty, or holds `.`, `*`, `>` or a space)"
                        ),
                    });
                }
                out.push_str(&text);
            }
        }
    }
    Ok(out)
}

/// Whether `token` can stand between two dots of a subject on its own.
pub fn is_subject_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control())
}

/// Declares `$name`, a schema of its own for a string → string map: client generators make
/// one named model of it, where inline maps would each become a model of the same name.
macro_rules! string_map_schema {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        struct $name;

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "object", "additionalProperties": {"type": "string"}})
            }
        }
    };
}

string_map_schema!(
    /// An HTTP action's headers (name → value).
    HttpHeaders
);
string_map_schema!(
    /// A NATS action's headers (name → value).
    NatsHeaders
);
string_map_schema!(
    /// A Redis action's fields (name → value).
    RedisFields
);

/// One concrete compensating action, as stored in a plan and shown to reviewers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ActionSpec {
    // Titled, so that client generators name each kind's model (not `ActionSpecType1`).
    #[schemars(title = "SqlAction")]
    Sql {
        target: String,
        statement: String,
        params: Vec<serde_json::Value>,
    },
    #[schemars(title = "HttpAction")]
    Http {
        target: String,
        method: String,
        url: String,
        #[schemars(with = "HttpHeaders")]
        headers: BTreeMap<String, String>,
        body: Option<serde_json::Value>,
    },
    /// A message published to a JetStream subject, with the idempotency key as `Nats-Msg-Id`.
    #[schemars(title = "NatsAction")]
    Nats {
        target: String,
        subject: String,
        #[schemars(with = "NatsHeaders")]
        headers: BTreeMap<String, String>,
        body: serde_json::Value,
    },
    /// An entry appended to a Redis stream (`XADD`), with the idempotency key recorded in the
    /// target's marker hash by the same script.
    #[schemars(title = "RedisAction")]
    Redis {
        target: String,
        stream: String,
        /// The entry's fields (name → value).
        #[schemars(with = "RedisFields")]
        fields: BTreeMap<String, String>,
    },
    #[schemars(title = "ManualAction")]
    Manual { instructions: String },
}

impl ActionSpec {
    /// An SQL action's bound values with the placeholder each stands for: `$1` in a
    /// PostgreSQL statement, `?1` otherwise. Empty for other actions.
    pub fn sql_bindings(&self) -> Vec<(String, &serde_json::Value)> {
        let ActionSpec::Sql {
            statement, params, ..
        } = self
        else {
            return Vec::new();
        };
        params
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let n = i + 1;
                let label = if statement.contains(&format!("${n}")) {
                    format!("${n}")
                } else {
                    format!("?{n}")
                };
                (label, v)
            })
            .collect()
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            ActionSpec::Sql { .. } => "sql",
            ActionSpec::Http { .. } => "http",
            ActionSpec::Nats { .. } => "nats",
            ActionSpec::Redis { .. } => "redis",
            ActionSpec::Manual { .. } => "manual",
        }
    }

    pub fn target(&self) -> Option<&str> {
        match self {
            ActionSpec::Sql { target, .. }
            | ActionSpec::Http { target, .. }
            | ActionSpec::Nats { target, .. }
            | ActionSpec::Redis { target, .. } => Some(target),
            ActionSpec::Manual { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ViolationKind;
    use crate::domain::template::{Scope, TemplateError};
    use serde_json::json;

    fn ctx<'a>(
        evidence: &'a serde_json::Value,
        key: &'a serde_json::Value,
    ) -> ViolationContext<'a> {
        ViolationContext {
            invariant: "payments-ledger",
            kind: ViolationKind::Missing,
            fingerprint: "abc",
            key: vec![("id", key)],
            evidence,
        }
    }

    #[test]
    fn a_nats_subject_takes_each_value_as_one_token_and_refuses_one_that_would_split_it() {
        let nats = Compensation::Nats(NatsCompensation {
            target: TargetName::parse("bus").unwrap(),
            subject: Template::parse("orders.{{key.id}}.created").unwrap(),
            headers: vec![(
                "Source".into(),
                Template::parse("trueup {{violation.kind}}").unwrap(),
            )],
            body: JsonTemplate::parse(&json!({"id": "{{key.id}}", "amount": "{{left.amount}}"}))
                .unwrap(),
        });
        let evidence = json!({"left": {"amount": 12.5}});
        let spec = nats.render(&ctx(&evidence, &json!(41)), |_| None).unwrap();
        assert_eq!(
            spec,
            ActionSpec::Nats {
                target: "bus".into(),
                subject: "orders.41.created".into(),
                headers: [("Source".to_owned(), "trueup missing".to_owned())].into(),
                body: json!({"id": 41, "amount": 12.5}),
            }
        );
        let injected = Compensation::Nats(NatsCompensation {
            headers: vec![("Source".into(), Template::parse("{{key.id}}").unwrap())],
            ..match &nats {
                Compensation::Nats(n) => n.clone(),
                _ => unreachable!(),
            }
        });
        let err = injected
            .render(&ctx(&evidence, &json!("x\r\nNats-Msg-Id: forged")), |_| {
                None
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("a NATS header cannot carry"),
            "{err}"
        );
        for bad in ["a.b", "a b", "*", ">", ""] {
            let err = nats
                .render(&ctx(&evidence, &json!(bad)), |_| None)
                .unwrap_err();
            assert!(
                err.to_string().contains("cannot be one NATS subject token"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_redis_entry_keeps_text_fields_as_text_and_writes_others_as_json() {
        let redis = Compensation::Redis(RedisCompensation {
            target: TargetName::parse("cache").unwrap(),
            stream: "orders".into(),
            fields: vec![
                (
                    "id".into(),
                    JsonTemplate::parse(&json!("{{key.id}}")).unwrap(),
                ),
                (
                    "note".into(),
                    JsonTemplate::parse(&json!("lost {{key.id}}")).unwrap(),
                ),
                (
                    "payload".into(),
                    JsonTemplate::parse(&json!({"amount": "{{left.amount}}"})).unwrap(),
                ),
            ],
        });
        let evidence = json!({"left": {"amount": 12.5}});
        let ActionSpec::Redis { fields, .. } = redis
            .render(&ctx(&evidence, &json!("o-7")), |_| None)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(fields["id"], "o-7");
        assert_eq!(fields["note"], "lost o-7");
        assert_eq!(fields["payload"], r#"{"amount":12.5}"#);
    }

    #[test]
    fn a_sql_template_becomes_a_statement_with_one_parameter_per_placeholder() {
        let sql = SqlCompensation {
            target: TargetName::parse("ledger").unwrap(),
            template: Template::parse(
                "INSERT INTO ledger (payment_id, amount) VALUES ({{key.id}}, {{ left.amount }});",
            )
            .unwrap(),
            style: ParamStyle::Dollar,
        };
        assert_eq!(
            sql.statement(),
            "INSERT INTO ledger (payment_id, amount) VALUES ($1, $2)"
        );
        let evidence = json!({"left": {"id": 7, "amount": "12.50"}});
        let key = json!(7);
        let action = Compensation::Sql(sql)
            .render(&ctx(&evidence, &key), |_| None)
            .unwrap();
        assert_eq!(
            action,
            ActionSpec::Sql {
                target: "ledger".into(),
                statement: "INSERT INTO ledger (payment_id, amount) VALUES ($1, $2)".into(),
                params: vec![json!(7), json!("12.50")],
            }
        );
    }

    #[test]
    fn an_http_path_value_cannot_escape_its_segment() {
        let http = Compensation::Http(HttpCompensation {
            target: TargetName::parse("billing").unwrap(),
            method: "POST".into(),
            path: Template::parse("/payments/{{key.id}}/sync").unwrap(),
            headers: vec![],
            body: Some(
                JsonTemplate::parse(
                    &json!({"amount": "{{left.amount}}", "note": "for {{key.id}}"}),
                )
                .unwrap(),
            ),
        });
        let evidence = json!({"left": {"amount": 12}});
        let key = json!("../admin?x=1");
        let action = http
            .render(&ctx(&evidence, &key), |_| {
                Some("https://billing/api/".into())
            })
            .unwrap();
        let ActionSpec::Http { url, body, .. } = action else {
            panic!("not http")
        };
        assert_eq!(url, "https://billing/api/payments/..%2Fadmin%3Fx%3D1/sync");
        assert_eq!(
            body,
            Some(json!({"amount": 12, "note": "for ../admin?x=1"}))
        );
        // A whole value of `..` or `.` (encoded or not, a URL parser moves along the path:
        // `payments/../sync` is `sync`) or an empty one is refused, naming the placeholder.
        for key in [json!(".."), json!("."), json!("")] {
            let err = http
                .render(&ctx(&evidence, &key), |_| {
                    Some("https://billing/api/".into())
                })
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("{{key.id}}: it makes the URL path segment")
                    && err.contains("empty or moves along the path"),
                "{key}: {err}"
            );
        }
        // Two values that make `..` together are refused too; an empty value beside
        // another in one segment is harmless.
        let joined = Compensation::Http(HttpCompensation {
            target: TargetName::parse("billing").unwrap(),
            method: "POST".into(),
            path: Template::parse("/payments/{{key.id}}{{left.suffix}}/sync").unwrap(),
            headers: vec![],
            body: None,
        });
        let base = |_: &TargetName| Some("https://billing/api/".to_owned());
        let dots = json!({"left": {"suffix": "."}});
        let err = joined
            .render(&ctx(&dots, &json!(".")), base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("URL path segment `..`"), "{err}");
        let empty = json!({"left": {"suffix": ""}});
        let ActionSpec::Http { url, .. } = joined.render(&ctx(&empty, &json!(7)), base).unwrap()
        else {
            panic!("not http")
        };
        assert_eq!(url, "https://billing/api/payments/7/sync");
        // A backslash parts segments as a slash does (URL parsers read it so); past `?` a
        // value moves nothing, and may be anything.
        let backslash = Compensation::Http(HttpCompensation {
            target: TargetName::parse("billing").unwrap(),
            method: "POST".into(),
            path: Template::parse("/files\\{{key.id}}?after={{left.suffix}}").unwrap(),
            headers: vec![],
            body: None,
        });
        let err = backslash
            .render(&ctx(&empty, &json!("..")), base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("URL path segment `..`"), "{err}");
        assert!(backslash.render(&ctx(&dots, &json!(7)), base).is_ok());
    }

    #[test]
    fn a_missing_column_names_what_the_row_has() {
        let evidence = json!({"left": {"id": 7, "amount": 1}});
        let key = json!(7);
        let t = Template::parse("{{left.amont}}").unwrap();
        let err = t.render_text(&ctx(&evidence, &key)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "{{left.amont}}: the left row has no column `amont` (it has: id, amount)"
        );
    }

    #[test]
    fn a_value_evidence_keeps_only_the_start_of_cannot_be_rendered() {
        let long = crate::domain::Value::Text("x".repeat(10_000).into());
        let evidence = json!({"left": {"id": 7, "note": long.to_evidence_json()}});
        let key = json!(7);
        let err = Template::parse("{{left.note}}")
            .unwrap()
            .render_text(&ctx(&evidence, &key))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`note` is longer than the 4096 bytes evidence keeps (10000 bytes)"),
            "{err}"
        );
    }

    #[test]
    fn malformed_placeholders_are_refused_with_the_reason() {
        assert!(matches!(
            Template::parse("x {{left.amount"),
            Err(TemplateError::Unclosed { .. })
        ));
        assert!(matches!(
            Template::parse("{{amount}}"),
            Err(TemplateError::Malformed { .. })
        ));
        assert!(matches!(
            Template::parse("{{lft.amount}}"),
            Err(TemplateError::UnknownScope { .. })
        ));
        assert!(matches!(
            Template::parse("{{left.a-b}}"),
            Err(TemplateError::Malformed { .. })
        ));
    }

    #[test]
    fn scopes_say_which_kinds_carry_them() {
        assert!(
            Scope::Right
                .unavailable_for(ViolationKind::Missing)
                .is_some()
        );
        assert!(
            Scope::Left
                .unavailable_for(ViolationKind::Missing)
                .is_none()
        );
        assert!(Scope::Row.unavailable_for(ViolationKind::Check).is_none());
        assert!(
            Scope::Key
                .unavailable_for(ViolationKind::Transition)
                .is_none()
        );
    }
}
