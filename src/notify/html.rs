//! A notice as HTML, the second part of its email: the same facts as the text part, with the
//! links clickable. One template, no external assets (mail clients block them).

use minijinja::{Environment, context};

const TEMPLATE: &str = include_str!("templates/notice.html");

/// The HTML of the notice `payload` (see [`super::payload`]), titled `subject`.
pub fn render(subject: &str, payload: &serde_json::Value) -> Result<String, minijinja::Error> {
    let mut env = Environment::new();
    // `.html`: every value is escaped.
    env.add_template("notice.html", TEMPLATE)?;
    let pairs = |v: &serde_json::Value, sep: &str| {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| match v.as_str() {
                        Some(s) => format!("{k}{sep}{s}"),
                        None => format!("{k}{sep}{v}"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    env.get_template("notice.html")?.render(context! {
        subject,
        p => minijinja::value::Serde(payload),
        counts => pairs(&payload["counts"], " "),
        labels => pairs(&payload["labels"], "="),
    })
}
