//! A violation's evidence as people read it, one line: what the CLI prints under a run and
//! what a notice shows (`missing 17 — no right row; left: amount_cents=1629 currency=USD`).

/// A key as people read it: `17` or `(acme, 17)`.
pub fn key(key: &serde_json::Value) -> String {
    match key {
        serde_json::Value::Array(parts) if parts.len() == 1 => scalar(&parts[0]),
        serde_json::Value::Array(parts) => {
            let parts: Vec<String> = parts.iter().map(scalar).collect();
            format!("({})", parts.join(", "))
        }
        other => scalar(other),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    if super::is_capped(v) {
        // A long value, as evidence keeps it: what it starts with, how long, which one.
        let c = &v[super::CAPPED];
        let start: String = c["prefix"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(24)
            .collect();
        return format!(
            "{start}… ({} bytes, sha256 {})",
            c["bytes"],
            &c["sha256"].as_str().unwrap_or_default()
                [..12.min(c["sha256"].as_str().map_or(0, str::len))]
        );
    }
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

fn row(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => scalar(other),
    }
}

/// One line saying what the evidence of a violation of `kind` shows.
pub fn evidence_of(kind: &str, e: &serde_json::Value) -> String {
    evidence_line(kind, e, 110)
}

/// [`evidence_of`] cut at `max` characters (a terminal line; more in a notice).
pub fn evidence_line(kind: &str, e: &serde_json::Value, max: usize) -> String {
    let text = match kind {
        "missing" => format!("no right row; left: {}", row(&e["left"])),
        "extra" => format!("no left row; right: {}", row(&e["right"])),
        "duplicate" => format!(
            "{} left row(s), {} right row(s)",
            e["left_rows"], e["right_rows"]
        ),
        "mismatch" => e["diff"]
            .as_array()
            .map(|diffs| {
                diffs
                    .iter()
                    .map(|d| {
                        format!(
                            "{}: {} ≠ {}",
                            scalar(&d["column"]),
                            scalar(&d["left"]),
                            scalar(&d["right"])
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        "check" => row(&e["row"]),
        "transition" => format!("{} (at {})", scalar(&e["problem"]), scalar(&e["at"])),
        _ => e.to_string(),
    };
    truncate(&text, max)
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}
