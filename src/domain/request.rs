//! What an invariant side reads from an HTTP API: one request, paged, its items mapped to
//! typed columns. Built once from an invariant file (`rules::request`); the reader
//! (`source::http`) only follows it.

use std::fmt;

use chrono::{DateTime, Utc};

use super::ColumnName;

/// What an invariant side reads: a query in its database's SQL, or a request to an API.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Sql(String),
    Http(Box<HttpRequest>),
    Stream(Box<StreamRead>),
}

/// The messages of a stream, each one row: a JetStream stream (those on `subject`, when
/// given), or the entries of a Redis stream at key `stream`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRead {
    pub stream: String,
    pub subject: Option<String>,
    /// The columns each message gives, from its JSON payload, its headers or its metadata.
    pub columns: Vec<Field>,
    /// One key's message fetched alone (NATS, a subject per key): the last message on this
    /// subject, its `{{key.column}}` placeholders filled with the key's values.
    pub lookup: Option<super::Template>,
}

impl StreamRead {
    /// Whether `column` is the message's stored time (`meta: time`): a read may then start at
    /// an instant on the server's side; a time from the payload may differ from it.
    pub fn is_stored_time(&self, column: &ColumnName) -> bool {
        self.columns
            .iter()
            .any(|f| &f.column == column && f.from == FieldFrom::Meta(MessageMeta::Time))
    }

    /// The lookup subject for `key` (column → canonical JSON value); `None` without a lookup
    /// or when a placeholder names a column `key` does not give; `Some(Err)` when a value
    /// cannot be one subject token (empty, or holding `.`, `*`, `>` or white space).
    pub fn lookup_subject(
        &self,
        key: &[(ColumnName, serde_json::Value)],
    ) -> Option<Result<String, String>> {
        let mut out = String::new();
        for segment in self.lookup.as_ref()?.segments() {
            match segment {
                super::Segment::Text(t) => out.push_str(t),
                super::Segment::Value(p) => {
                    let (_, value) = key.iter().find(|(c, _)| c.as_str() == p.field)?;
                    let token = super::json_text(value);
                    if !super::is_subject_token(&token) {
                        return Some(Err(format!(
                            "the key value `{token}` cannot be one subject token ({p})"
                        )));
                    }
                    out.push_str(&token);
                }
            }
        }
        Some(Ok(out))
    }
}

impl fmt::Display for StreamRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {}", self.stream)?;
        if let Some(subject) = &self.subject {
            write!(f, " subject {subject}")?;
        }
        Ok(())
    }
}

impl Read {
    /// The SQL, for a side on a database; `None` for an API's.
    pub fn sql(&self) -> Option<&str> {
        match self {
            Read::Sql(q) => Some(q),
            Read::Http(_) | Read::Stream(_) => None,
        }
    }
}

/// As one line of text (the SQL, or `GET path?params`): how the API and reports show a side.
impl serde::Serialize for Read {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Read {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Read::Sql(q) => f.write_str(q),
            Read::Http(r) => r.fmt(f),
            Read::Stream(r) => r.fmt(f),
        }
    }
}

/// `GET base_url + path ? params`, page after page, each page's items at `items`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// Relative to the source's `base_url`, without a leading `/`.
    pub path: String,
    pub params: Vec<(String, Param)>,
    /// Where a page's items are (empty: the body is the list itself).
    pub items: JsonPath,
    pub paging: Paging,
    /// The columns each item gives, in the order written.
    pub columns: Vec<Field>,
    /// How one key's item is fetched alone (the re-check before an action), if the API can.
    pub lookup: Option<Lookup>,
}

/// `GET base_url + path` for one key, its placeholders `{{key.column}}` filled with the key's
/// values (each one path segment); a 404 means the key is absent.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub path: super::Template,
    /// Where the item is in the response (`$`: the body is the item; a list: each is one).
    pub item: JsonPath,
}

impl Lookup {
    /// The path for `key` (column → canonical JSON value); `None` when a placeholder names a
    /// column `key` does not give.
    pub fn path_for(&self, key: &[(ColumnName, serde_json::Value)]) -> Option<String> {
        let mut out = String::new();
        for segment in self.path.segments() {
            match segment {
                super::Segment::Text(t) => out.push_str(t),
                super::Segment::Value(p) => {
                    let (_, value) = key.iter().find(|(c, _)| c.as_str() == p.field)?;
                    // `.` and `..` would move along the path, encoded or not: such a key is
                    // not looked up alone.
                    if matches!(super::json_text(value).as_str(), "." | "..") {
                        return None;
                    }
                    super::push_path_segment(value, &mut out);
                }
            }
        }
        Some(out.trim_start_matches('/').to_owned())
    }
}

/// A query parameter's value: text, with the run's window edges where it says
/// `{{window.from}}`, `{{window.to}}` (RFC 3339) or `{{window.from_epoch}}`,
/// `{{window.to_epoch}}` (seconds since 1970).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param(Vec<ParamPart>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowEdge {
    From,
    To,
    FromEpoch,
    ToEpoch,
}

impl WindowEdge {
    fn parse(field: &str) -> Option<Self> {
        Some(match field {
            "from" => WindowEdge::From,
            "to" => WindowEdge::To,
            "from_epoch" => WindowEdge::FromEpoch,
            "to_epoch" => WindowEdge::ToEpoch,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            WindowEdge::From => "from",
            WindowEdge::To => "to",
            WindowEdge::FromEpoch => "from_epoch",
            WindowEdge::ToEpoch => "to_epoch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ParamPart {
    Text(String),
    Window(WindowEdge),
}

impl Param {
    pub fn text(raw: &str) -> Self {
        Self(vec![ParamPart::Text(raw.to_owned())])
    }

    /// Text with `{{window.*}}` placeholders; `Err` names a placeholder that is not one.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(ParamPart::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` in `{raw}` is not closed with `}}}}`"))?;
            let inner = after[..close].trim();
            let edge = inner
                .strip_prefix("window.")
                .and_then(WindowEdge::parse)
                .ok_or_else(|| {
                    format!("`{{{{{inner}}}}}` is not a value a read has; use {{{{window.from}}}}, {{{{window.to}}}}, {{{{window.from_epoch}}}} or {{{{window.to_epoch}}}}")
                })?;
            parts.push(ParamPart::Window(edge));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(ParamPart::Text(rest.to_owned()));
        }
        Ok(Self(parts))
    }

    /// Whether the value needs the run's window.
    pub fn uses_window(&self) -> bool {
        self.0.iter().any(|p| matches!(p, ParamPart::Window(_)))
    }

    /// The value for a window from `from` to `to`; `None` when it needs a window and has none.
    pub fn render(&self, window: Option<(DateTime<Utc>, DateTime<Utc>)>) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                ParamPart::Text(t) => out.push_str(t),
                ParamPart::Window(edge) => {
                    let (from, to) = window?;
                    let at = match edge {
                        WindowEdge::From | WindowEdge::FromEpoch => from,
                        WindowEdge::To | WindowEdge::ToEpoch => to,
                    };
                    match edge {
                        WindowEdge::From | WindowEdge::To => {
                            out.push_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                        }
                        WindowEdge::FromEpoch | WindowEdge::ToEpoch => {
                            out.push_str(&at.timestamp().to_string())
                        }
                    }
                }
            }
        }
        Some(out)
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.0 {
            match part {
                ParamPart::Text(t) => f.write_str(t)?,
                ParamPart::Window(edge) => write!(f, "{{{{window.{}}}}}", edge.name())?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GET {}", self.path)?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// How the next page is asked for, and how the last one is known.
#[derive(Debug, Clone, PartialEq)]
pub enum Paging {
    /// One response holds every item.
    None,
    /// The next page is asked for with `param` set to a cursor; paging ends when a page is
    /// empty, when `has_more` (if given) is false, or when the cursor is absent.
    Cursor {
        param: String,
        from: CursorFrom,
        has_more: Option<JsonPath>,
    },
    /// The next page's URL is the response's `Link: <…>; rel="next"`; paging ends without one.
    Link,
    /// `param` counts items skipped; `size` items a page, asked for with `size_param`; paging
    /// ends at a page shorter than `size`.
    Offset {
        param: String,
        size: u64,
        size_param: Option<String>,
    },
    /// `param` is the page number, from `first`; paging ends at an empty page.
    Number { param: String, first: u64 },
}

/// Where a cursor comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CursorFrom {
    /// A field of the page's last item (`starting_after=<last id>`).
    LastItem(JsonPath),
    /// A field of the response (`meta.next_cursor`).
    Response(JsonPath),
}

/// One column of an item or a message: the value `from` there, read as `kind`.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub column: ColumnName,
    pub from: FieldFrom,
    pub kind: FieldKind,
}

/// Where a column's value is.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldFrom {
    /// In the JSON item (an API's) or payload (a message's).
    Json(JsonPath),
    /// A message header (as text).
    Header(String),
    /// What the stream knows of a message.
    Meta(MessageMeta),
}

impl fmt::Display for FieldFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldFrom::Json(p) => p.fmt(f),
            FieldFrom::Header(h) => write!(f, "header {h}"),
            FieldFrom::Meta(m) => write!(f, "meta {}", m.name()),
        }
    }
}

/// A message's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageMeta {
    /// When the stream stored it (a timestamp).
    Time,
    /// Its sequence number in the stream (an integer).
    Sequence,
    /// The subject it was published on (text; NATS).
    Subject,
    /// Its entry id (text, like `1733300000000-0`; Redis).
    Id,
}

impl MessageMeta {
    pub const NAMES: &'static str = "time, sequence, subject (NATS) or id (Redis, an event log)";

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "time" => MessageMeta::Time,
            "sequence" => MessageMeta::Sequence,
            "subject" => MessageMeta::Subject,
            "id" => MessageMeta::Id,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageMeta::Time => "time",
            MessageMeta::Sequence => "sequence",
            MessageMeta::Subject => "subject",
            MessageMeta::Id => "id",
        }
    }
}

/// How a JSON value becomes a column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// As JSON has it: a whole number is an integer, another number a decimal, a string text.
    Auto,
    Int,
    Decimal,
    Float,
    Text,
    Bool,
    /// An RFC 3339 string, or seconds since 1970 (a number).
    Timestamp,
    /// `YYYY-MM-DD`.
    Date,
    Json,
}

impl FieldKind {
    pub const NAMES: &'static str = "int, decimal, float, text, bool, timestamp, date or json";

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "int" | "integer" => FieldKind::Int,
            "decimal" | "numeric" => FieldKind::Decimal,
            "float" => FieldKind::Float,
            "text" | "string" => FieldKind::Text,
            "bool" | "boolean" => FieldKind::Bool,
            "timestamp" => FieldKind::Timestamp,
            "date" => FieldKind::Date,
            "json" => FieldKind::Json,
            _ => return None,
        })
    }
}

/// A path into a JSON document, written `data.items` or `customer.0.id` (a number indexes a
/// list); `$` or an empty path is the document itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        let body = trimmed
            .strip_prefix("$.")
            .or_else(|| (trimmed == "$").then_some(""))
            .unwrap_or(trimmed);
        if body.is_empty() {
            return Ok(Self::default());
        }
        let segments: Vec<String> = body.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!(
                "`{raw}` has an empty step; write fields joined by dots, like `data.items`"
            ));
        }
        Ok(Self(segments))
    }

    /// The value at this path, if there is one.
    pub fn find<'a>(&self, doc: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        self.0.iter().try_fold(doc, |v, step| match v {
            serde_json::Value::Object(map) => map.get(step),
            serde_json::Value::Array(list) => list.get(step.parse::<usize>().ok()?),
            _ => None,
        })
    }

    /// The value at this path, to change or take.
    pub fn find_mut<'a>(
        &self,
        doc: &'a mut serde_json::Value,
    ) -> Option<&'a mut serde_json::Value> {
        self.0.iter().try_fold(doc, |v, step| match v {
            serde_json::Value::Object(map) => map.get_mut(step),
            serde_json::Value::Array(list) => list.get_mut(step.parse::<usize>().ok()?),
            _ => None,
        })
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("$")
        } else {
            f.write_str(&self.0.join("."))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_parameter_takes_the_windows_edges_as_instants_or_epoch_seconds() {
        let from: DateTime<Utc> = "2026-11-24T10:00:00Z".parse().unwrap();
        let to: DateTime<Utc> = "2026-12-04T10:00:00.5Z".parse().unwrap();
        let p = Param::parse("{{window.from}}..{{ window.to_epoch }}").unwrap();
        assert!(p.uses_window());
        assert_eq!(
            p.render(Some((from, to))).as_deref(),
            Some("2026-11-24T10:00:00Z..1796378400")
        );
        assert_eq!(p.render(None), None);
        assert_eq!(p.to_string(), "{{window.from}}..{{window.to_epoch}}");
        let plain = Param::parse("100").unwrap();
        assert!(!plain.uses_window());
        assert_eq!(plain.render(None).as_deref(), Some("100"));
        assert!(
            Param::parse("{{key.id}}")
                .unwrap_err()
                .contains("is not a value a read has")
        );
        assert!(Param::parse("{{window.from").is_err());
    }

    #[test]
    fn a_lookup_path_takes_each_key_value_as_one_encoded_segment() {
        let lookup = Lookup {
            path: crate::domain::Template::parse("/charges/{{key.id}}/x").unwrap(),
            item: JsonPath::default(),
        };
        let key = |v| vec![(ColumnName::parse("id").unwrap(), v)];
        assert_eq!(
            lookup.path_for(&key(json!(17))).as_deref(),
            Some("charges/17/x")
        );
        assert_eq!(
            lookup.path_for(&key(json!("a/b c"))).as_deref(),
            Some("charges/a%2Fb%20c/x")
        );
        assert_eq!(
            lookup.path_for(&[(ColumnName::parse("other").unwrap(), json!(1))]),
            None
        );
        assert_eq!(lookup.path_for(&key(json!(".."))), None);
    }

    #[test]
    fn a_path_walks_objects_and_lists_and_the_root_is_the_document() {
        let doc = json!({"data": {"items": [{"id": 7}]}});
        let path = JsonPath::parse("data.items.0.id").unwrap();
        assert_eq!(path.find(&doc), Some(&json!(7)));
        assert_eq!(JsonPath::parse("$.data.items.0.id").unwrap(), path);
        assert_eq!(JsonPath::parse("$").unwrap().find(&doc), Some(&doc));
        assert_eq!(JsonPath::parse("data.missing").unwrap().find(&doc), None);
        assert_eq!(JsonPath::parse("data.items.x").unwrap().find(&doc), None);
        assert!(JsonPath::parse("data..items").is_err());
        assert_eq!(path.to_string(), "data.items.0.id");
    }
}
