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
    // A group lists each notice in one line, then shows each in full; a notice is a group
    // of one without the list.
    let grouped = payload["kind"] == "group";
    let notices: Vec<&serde_json::Value> = if grouped {
        payload["notices"]
            .as_array()
            .into_iter()
            .flatten()
            .collect()
    } else {
        vec![payload]
    };
    let notices: Vec<minijinja::Value> = notices
        .into_iter()
        .map(|p| {
            context! {
                p => minijinja::value::Serde(p),
                heading => super::group::one_line(p),
                counts => pairs(&p["counts"], " "),
                labels => pairs(&p["labels"], "="),
                held => p.get("held").filter(|h| h.is_object()).map(super::held_line),
            }
        })
        .collect();
    env.get_template("notice.html")?.render(context! {
        subject,
        grouped,
        notices,
        dedup_key => payload["dedup_key"].as_str().unwrap_or(""),
    })
}
