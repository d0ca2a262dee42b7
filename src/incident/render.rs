//! A [`Report`] as Markdown (pastes into a ticket), one self-contained HTML file (inline
//! style, no external assets, printable), or JSON (the report type itself).
//!
//! The templates live in `templates/` and are compiled into the binary. Only the HTML one is
//! named `*.html`, which is what turns minijinja's auto-escaping on; the Markdown one escapes
//! table cells with the `cell` filter.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use minijinja::value::{Serde, Value};
use minijinja::{Environment, syntax::SyntaxConfig};

use super::report::Report;

/// A report format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    Md,
    Html,
    Json,
}

impl ReportFormat {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "md" | "markdown" => Some(Self::Md),
            "html" => Some(Self::Html),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Md => "md",
            Self::Html => "html",
            Self::Json => "json",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Md => "text/markdown; charset=utf-8",
            Self::Html => "text/html; charset=utf-8",
            Self::Json => "application/json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot render the report: {0}")]
pub struct RenderError(String);

impl RenderError {
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

/// A template environment as trueup's templates expect it: block tags on their own lines leave
/// no blank lines behind (Markdown tables need that), and the filters of [`add_filters`]. The
/// console's pages use it too.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default syntax with trimming is valid"),
    );
    add_filters(&mut env);
    env
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = environment();
    env.add_template("report.md", include_str!("templates/report.md"))
        .expect("report.md parses");
    env.add_template("report.html", include_str!("templates/report.html"))
        .expect("report.html parses");
    env
});

/// The filters trueup's templates use: `dt`, `dur`, `num`, `cell`, `keytext`, `tracekey`,
/// `words`.
fn add_filters(env: &mut Environment<'_>) {
    env.add_filter("dt", dt);
    env.add_filter("dur", dur);
    env.add_filter("num", num);
    env.add_filter("cell", cell);
    env.add_filter("keytext", keytext);
    env.add_filter("tracekey", tracekey);
    env.add_filter("words", words);
}

/// Renders the report. The same report always renders to the same bytes.
pub fn render(report: &Report, format: ReportFormat) -> Result<String, RenderError> {
    render_linked(report, format, &ReportLinks::default())
}

/// Where a rendered report links to.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportLinks<'a> {
    /// Back to where the HTML was opened from (the console's incident page); printing leaves
    /// it out.
    pub back: Option<&'a str>,
    /// The console, where each sample key links to its trace: `""` from a page of the
    /// console itself, `serve.external_url` elsewhere; `None`, no such links.
    pub console: Option<&'a str>,
}

/// Renders the report with its links (HTML and Markdown).
pub fn render_linked(
    report: &Report,
    format: ReportFormat,
    links: &ReportLinks<'_>,
) -> Result<String, RenderError> {
    match format {
        ReportFormat::Json => serde_json::to_string_pretty(report)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| RenderError(e.to_string())),
        ReportFormat::Md | ReportFormat::Html => {
            let name = format!("report.{}", format.extension());
            let template = TEMPLATES
                .get_template(&name)
                .map_err(|e| RenderError(e.to_string()))?;
            template
                .render(minijinja::context! {
                    r => Value::from(Serde(report)),
                    timeline_head => super::report::TIMELINE_LIMIT / 2,
                    back => links.back,
                    trace => links
                        .console
                        .map(|c| format!("{}/ui/trace", c.trim_end_matches('/'))),
                })
                .map_err(|e| RenderError(format!("{e:#}")))
        }
    }
}

/// An RFC 3339 time as `2026-11-20 10:00:00 UTC`; anything else as it is.
fn dt(value: Value) -> String {
    if value.is_none() || value.is_undefined() {
        return "—".into();
    }
    let raw = value.to_string();
    match raw.parse::<DateTime<Utc>>() {
        Ok(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => raw,
    }
}

/// Seconds as `2h 05m 10s`.
fn dur(value: Value) -> String {
    let Ok(secs) = i64::try_from(value) else {
        return "—".into();
    };
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// An integer with thousands separators: `12,345`.
fn num(value: Value) -> String {
    match i64::try_from(value.clone()) {
        Ok(n) => thousands(n),
        Err(_) => value.to_string(),
    }
}

/// `12345` as `12,345`, as the reports print counts.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Text safe inside a Markdown table cell: no pipes, no line breaks.
fn cell(value: Value) -> String {
    if value.is_none() || value.is_undefined() {
        return String::new();
    }
    value
        .to_string()
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// A violation's key as `col=value, col=value` (or its values, `7, eu`).
fn keytext(value: Value) -> String {
    use crate::domain::json_text;
    match serde_json::to_value(&value) {
        Ok(serde_json::Value::Array(values)) => {
            values.iter().map(json_text).collect::<Vec<_>>().join(", ")
        }
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", json_text(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Ok(other) => other.to_string(),
        Err(_) => value.to_string(),
    }
}

/// A violation's key as `trueup trace` takes it: its one value as text, or the JSON array of
/// a key of several columns.
pub fn tracekey(value: Value) -> String {
    match serde_json::to_value(&value) {
        Ok(key @ serde_json::Value::Array(_)) => crate::domain::record_id_of_key(&key),
        Ok(other) => other.to_string(),
        Err(_) => value.to_string(),
    }
}

/// `snake_case` as words: `unfinished_replay` → `unfinished replay`.
fn words(value: Value) -> String {
    value.to_string().replace('_', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_format_times_durations_and_counts_for_people() {
        assert_eq!(
            dt(Value::from("2026-11-20T10:00:00Z")),
            "2026-11-20 10:00:00 UTC"
        );
        assert_eq!(dt(Value::from(())), "—");
        assert_eq!(dur(Value::from(7510)), "2h 05m 10s");
        assert_eq!(dur(Value::from(65)), "1m 05s");
        assert_eq!(num(Value::from(1_234_567)), "1,234,567");
        assert_eq!(num(Value::from(999)), "999");
        assert_eq!(cell(Value::from("a|b\nc")), "a\\|b c");
        assert_eq!(words(Value::from("unfinished_replay")), "unfinished replay");
        assert_eq!(
            keytext(Value::from(Serde(serde_json::json!([7, "eu"])))),
            "7, eu"
        );
    }
}
