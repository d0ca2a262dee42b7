//! Templates: text with `{{scope.field}}` placeholders, and JSON bodies made of them. A
//! template is parsed once; how each placeholder's value enters an action is decided where
//! the template is used (see `compensation.rs`).

use std::fmt;

use super::ViolationKind;

/// Where a placeholder takes its value from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Key,
    Left,
    Right,
    Row,
    Violation,
}

impl Scope {
    pub const NAMES: &'static str = "key, left, right, row or violation";

    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "key" => Scope::Key,
            "left" => Scope::Left,
            "right" => Scope::Right,
            "row" => Scope::Row,
            "violation" => Scope::Violation,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Left => "left",
            Scope::Right => "right",
            Scope::Row => "row",
            Scope::Violation => "violation",
        }
    }

    /// Whether a violation of `kind` carries this scope; `None` when it does, otherwise why not.
    pub fn unavailable_for(self, kind: ViolationKind) -> Option<&'static str> {
        use ViolationKind::*;
        match (self, kind) {
            (Scope::Key | Scope::Violation, _) => None,
            (Scope::Left, Missing | Duplicate | Mismatch) => None,
            (Scope::Right, Extra | Duplicate | Mismatch) => None,
            (Scope::Row, Check) => None,
            (Scope::Left, Extra) => Some("an `extra` violation has no left row"),
            (Scope::Right, Missing) => Some("a `missing` violation has no right row"),
            (Scope::Row, _) => Some("`row` is the row a `check` query returned"),
            (_, Check) => Some("a `check` violation has one row: use `row.`"),
            (_, Transition) => Some("a `transition` violation has no rows: use `key.`"),
        }
    }
}

/// `{{scope.field}}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placeholder {
    pub scope: Scope,
    pub field: String,
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{{{}.{}}}}}", self.scope.as_str(), self.field)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{` at character {at} is not closed with `}}}}`")]
    Unclosed { at: usize },
    #[error(
        "`{{{{{inner}}}}}` is not a placeholder; write `{{{{scope.field}}}}` with scope {}",
        Scope::NAMES
    )]
    Malformed { inner: String },
    #[error("`{{{{{inner}}}}}`: unknown scope `{scope}`; use {}", Scope::NAMES)]
    UnknownScope { inner: String, scope: String },
    #[error(
        "`{{{{violation.{field}}}}}`: use violation.kind, violation.fingerprint or violation.invariant"
    )]
    UnknownViolationField { field: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Value(Placeholder),
}

/// Text with placeholders, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Segment>);

impl Template {
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = raw;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or(TemplateError::Unclosed {
                at: offset + open + 1,
            })?;
            let inner = after[..close].trim();
            segments.push(Segment::Value(parse_placeholder(inner)?));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        Ok(Self(segments))
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.0.iter().filter_map(|s| match s {
            Segment::Value(p) => Some(p),
            Segment::Text(_) => None,
        })
    }

    /// The placeholder, when the template is exactly one placeholder and nothing else.
    fn sole_placeholder(&self) -> Option<&Placeholder> {
        match self.0.as_slice() {
            [Segment::Value(p)] => Some(p),
            _ => None,
        }
    }

    /// The text with each value interpolated as plain text.
    pub fn render_text(&self, ctx: &ViolationContext<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        for s in &self.0 {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Value(p) => out.push_str(&json_text(&ctx.lookup(p)?)),
            }
        }
        Ok(out)
    }

    /// The text as a URL path, each value percent-encoded so that it stays inside its path
    /// segment; a segment a value wrote into is never left empty, `.` or `..`, which would
    /// move the request along the path (encoded or not, URL parsers take `%2e%2e` for `..`)
    /// to an endpoint nobody approved.
    pub fn render_path(&self, ctx: &ViolationContext<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        // Where the current segment starts, and the first placeholder written into it.
        let mut segment = 0;
        let mut wrote: Option<&Placeholder> = None;
        let check = |out: &str, from: usize, wrote: Option<&Placeholder>| match wrote {
            Some(p) if matches!(&out[from..], "" | "." | "..") => Err(RenderError::Unfit {
                what: p.to_string(),
                reason: format!(
                    "it makes the URL path segment `{}`, which is empty or moves along the path; this action cannot be rendered for it",
                    &out[from..]
                ),
            }),
            _ => Ok(()),
        };
        // Past a `?` or `#` is the query or the fragment, where a value moves nothing.
        let mut in_path = true;
        for s in &self.0 {
            match s {
                Segment::Text(t) => {
                    for c in t.chars() {
                        // URL parsers take `\` for `/` in http(s) paths.
                        if in_path && matches!(c, '/' | '\\' | '?' | '#') {
                            check(&out, segment, wrote)?;
                            wrote = None;
                            segment = out.len() + c.len_utf8();
                            in_path = !matches!(c, '?' | '#');
                        }
                        out.push(c);
                    }
                }
                Segment::Value(p) => {
                    push_path_segment(&ctx.lookup(p)?, &mut out);
                    if in_path {
                        wrote = wrote.or(Some(p));
                    }
                }
            }
        }
        if in_path {
            check(&out, segment, wrote)?;
        }
        Ok(out)
    }
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, TemplateError> {
    let Some((scope, field)) = inner.split_once('.') else {
        return Err(TemplateError::Malformed {
            inner: inner.to_owned(),
        });
    };
    let field_ok = !field.is_empty()
        && field
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()));
    if !field_ok {
        return Err(TemplateError::Malformed {
            inner: inner.to_owned(),
        });
    }
    let scope = Scope::parse(scope).ok_or_else(|| TemplateError::UnknownScope {
        inner: inner.to_owned(),
        scope: scope.to_owned(),
    })?;
    if scope == Scope::Violation && !["kind", "fingerprint", "invariant"].contains(&field) {
        return Err(TemplateError::UnknownViolationField {
            field: field.to_owned(),
        });
    }
    Ok(Placeholder {
        scope,
        field: field.to_owned(),
    })
}

/// Everything but unreserved characters is encoded, so a value stays one path segment.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Writes `v` (as [`json_text`]) as one URL path segment.
pub fn push_path_segment(v: &serde_json::Value, out: &mut String) {
    out.extend(percent_encoding::utf8_percent_encode(
        &json_text(v),
        PATH_SEGMENT,
    ));
}

/// A JSON value as text: strings without quotes, everything else as JSON.
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON body whose strings are templates.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    Literal(serde_json::Value),
    Text(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    pub fn parse(raw: &serde_json::Value) -> Result<Self, TemplateError> {
        Ok(match raw {
            serde_json::Value::String(s) => {
                let t = Template::parse(s)?;
                if t.placeholders().next().is_some() {
                    JsonTemplate::Text(t)
                } else {
                    JsonTemplate::Literal(raw.clone())
                }
            }
            serde_json::Value::Array(items) => {
                JsonTemplate::Array(items.iter().map(Self::parse).collect::<Result<_, _>>()?)
            }
            serde_json::Value::Object(map) => JsonTemplate::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::parse(v)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => JsonTemplate::Literal(other.clone()),
        })
    }

    pub fn placeholders(&self) -> Vec<&Placeholder> {
        match self {
            JsonTemplate::Literal(_) => Vec::new(),
            JsonTemplate::Text(t) => t.placeholders().collect(),
            JsonTemplate::Array(items) => items.iter().flat_map(Self::placeholders).collect(),
            JsonTemplate::Object(entries) => {
                entries.iter().flat_map(|(_, v)| v.placeholders()).collect()
            }
        }
    }

    pub fn render(&self, ctx: &ViolationContext<'_>) -> Result<serde_json::Value, RenderError> {
        Ok(match self {
            JsonTemplate::Literal(v) => v.clone(),
            JsonTemplate::Text(t) => match t.sole_placeholder() {
                Some(p) => ctx.lookup(p)?,
                None => serde_json::Value::String(t.render_text(ctx)?),
            },
            JsonTemplate::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|i| i.render(ctx))
                    .collect::<Result<_, _>>()?,
            ),
            JsonTemplate::Object(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    map.insert(k.clone(), v.render(ctx)?);
                }
                serde_json::Value::Object(map)
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{placeholder}: {reason}")]
    Missing { placeholder: String, reason: String },
    #[error("target `{target}` is not configured")]
    UnknownTarget { target: String },
    /// A value that exists but cannot stand where the template puts it.
    #[error("{what}: {reason}")]
    Unfit { what: String, reason: String },
}

/// What a template can see of one violation.
#[derive(Debug, Clone)]
pub struct ViolationContext<'a> {
    pub invariant: &'a str,
    pub kind: ViolationKind,
    pub fingerprint: &'a str,
    /// Key column names with the violation's key values, in key order.
    pub key: Vec<(&'a str, &'a serde_json::Value)>,
    /// The violation's evidence (`left`, `right`, `row` objects of column → value).
    pub evidence: &'a serde_json::Value,
}

impl ViolationContext<'_> {
    pub fn lookup(&self, p: &Placeholder) -> Result<serde_json::Value, RenderError> {
        let missing = |reason: String| RenderError::Missing {
            placeholder: p.to_string(),
            reason,
        };
        match p.scope {
            Scope::Violation => Ok(serde_json::Value::String(match p.field.as_str() {
                "kind" => self.kind.to_string(),
                "fingerprint" => self.fingerprint.to_owned(),
                _ => self.invariant.to_owned(),
            })),
            Scope::Key => find_field(self.key.iter().map(|(k, v)| (*k, *v)), &p.field)
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = self.key.iter().map(|(k, _)| *k).collect();
                    missing(format!(
                        "`{}` is not a key column (the key is: {})",
                        p.field,
                        names.join(", ")
                    ))
                }),
            scope => {
                let Some(row) = self
                    .evidence
                    .get(scope.as_str())
                    .and_then(|r| r.as_object())
                else {
                    return Err(missing(
                        scope
                            .unavailable_for(self.kind)
                            .unwrap_or("the violation's evidence has no such row")
                            .to_owned(),
                    ));
                };
                let value = find_field(row.iter().map(|(k, v)| (k.as_str(), v)), &p.field);
                if let Some(v) = value
                    && super::is_capped(v)
                {
                    // Evidence keeps only the start of a long value: writing that start
                    // downstream would be a wrong value, not a repair.
                    return Err(missing(format!(
                        "the {} row's `{}` is longer than the {} bytes evidence keeps ({} bytes); a compensation cannot carry it — make the action look it up by key instead",
                        scope.as_str(),
                        p.field,
                        super::EVIDENCE_VALUE_CAP,
                        v[super::CAPPED]["bytes"]
                    )));
                }
                value.cloned().ok_or_else(|| {
                    let names: Vec<&str> = row.keys().map(String::as_str).collect();
                    missing(format!(
                        "the {} row has no column `{}` (it has: {})",
                        scope.as_str(),
                        p.field,
                        names.join(", ")
                    ))
                })
            }
        }
    }
}

/// Exact name first, then the one name equal ignoring case (as result columns are matched).
fn find_field<'v>(
    fields: impl Iterator<Item = (&'v str, &'v serde_json::Value)> + Clone,
    name: &str,
) -> Option<&'v serde_json::Value> {
    if let Some((_, v)) = fields.clone().find(|(k, _)| *k == name) {
        return Some(v);
    }
    let mut folded = fields.filter(|(k, _)| k.eq_ignore_ascii_case(name));
    match (folded.next(), folded.next()) {
        (Some((_, v)), None) => Some(v),
        _ => None,
    }
}
