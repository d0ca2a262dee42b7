//! What the API reads from query strings and bodies, parsed once into types whose JSON Schema
//! says exactly what they accept: a value the document allows is taken, one it rules out is
//! refused (400 from a query string, 422 from a body) before a handler runs.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

/// The most items one page holds.
pub(super) const MAX_PAGE: u32 = 1000;

/// How many items a page holds (each list has its default).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "u32")]
pub(super) struct PageSize(u32);

impl TryFrom<u32> for PageSize {
    type Error = String;

    fn try_from(n: u32) -> Result<Self, String> {
        if (1..=MAX_PAGE).contains(&n) {
            Ok(Self(n))
        } else {
            Err(format!("limit {n}: from 1 to {MAX_PAGE}"))
        }
    }
}

impl JsonSchema for PageSize {
    fn schema_name() -> Cow<'static, str> {
        "PageSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE})
    }
}

/// The page size asked for, or `default`.
pub(super) fn page_size(limit: Option<PageSize>, default: u32) -> u32 {
    limit.map_or(default, |l| l.0)
}

/// A count of at least 1 (JSON's `3.0` is the integer 3, as JSON Schema has it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Count(pub(super) u64);

const MAX_COUNT: u64 = 1_000_000;

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let whole = n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_COUNT as f64)
                .map(|f| f as u64)
        });
        match whole {
            Some(c) if (1..=MAX_COUNT).contains(&c) => Ok(Self(c)),
            _ => Err(serde::de::Error::custom(format!(
                "{n} is not a whole number from 1 to {MAX_COUNT}"
            ))),
        }
    }
}

impl JsonSchema for Count {
    fn schema_name() -> Cow<'static, str> {
        "Count".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 1, "maximum": MAX_COUNT})
    }
}

/// A string type checked against its pattern: `check` accepts exactly what `pattern`
/// matches (and the domain then accepts).
macro_rules! pattern_string {
    ($(#[$doc:meta])* $ty:ident, $pattern:expr, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(try_from = "String")]
        pub(super) struct $ty(pub(super) String);

        impl TryFrom<String> for $ty {
            type Error = String;

            fn try_from(raw: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&raw)?;
                Ok(Self(raw))
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({"type": "string", "pattern": $pattern})
            }
        }
    };
}

/// `N` and a unit: 1 to 6 digits, no leading zero.
fn number_and_unit<'a>(raw: &'a str, units: &[&str]) -> Option<&'a str> {
    let digits = raw.len() - raw.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (n, unit) = raw.split_at(digits);
    let ok = (1..=6).contains(&n.len()) && !n.starts_with('0') && units.contains(&unit);
    ok.then_some(unit)
}

pattern_string!(
    /// A duration of whole seconds, minutes, hours or days (`90s`, `15m`, `2h`, `7d`).
    Duration,
    "^[1-9][0-9]{0,5}(s|m|h|d)$",
    |raw| match number_and_unit(raw, &["s", "m", "h", "d"]) {
        Some(_) => Ok(()),
        None => Err(format!(
            "`{raw}` is not a duration: write a whole number and s, m, h or d (e.g. 15m)"
        )),
    }
);

impl Duration {
    pub(super) fn parse(&self) -> crate::domain::HumanDuration {
        // Only what humantime reads is let through (checked when it was made).
        crate::domain::HumanDuration::parse(&self.0)
            .unwrap_or_else(|_| crate::domain::HumanDuration::from_std(std::time::Duration::ZERO))
    }
}

pattern_string!(
    /// How fast a plan is applied: `N/s`, `N/m` or `N/h`, or `unlimited`.
    Rate,
    "^([1-9][0-9]{0,5}/(s|m|h)|unlimited)$",
    |raw| {
        let ok = raw == "unlimited"
            || raw.split_once('/').is_some_and(|(n, unit)| {
                number_and_unit(&format!("{n}{unit}"), &["s", "m", "h"]).is_some()
            });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "rate `{raw}`: write N/s, N/m or N/h (e.g. 5/s), or `unlimited`"
            ))
        }
    }
);

pattern_string!(
    /// An incident's name: lowercase letters, digits, `-`, `_` and `.`, starting with a
    /// letter or digit, at most 128 characters.
    IncidentName,
    "^[a-z0-9][a-z0-9._-]{0,127}$",
    |raw| crate::domain::IncidentName::parse(raw)
        .map(|_| ())
        .map_err(|e| e.to_string())
);

pattern_string!(
    /// The whole content hash of a plan (64 hexadecimal digits), as `GET /api/v1/plans/{id}`
    /// gives it.
    ContentHash,
    "^[0-9a-fA-F]{64}$",
    |raw| {
        if raw.len() == 64 && raw.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(());
        }
        let why = match crate::plan::ReviewedHash::exact(raw) {
            Err(e) => e.to_string(),
            Ok(_) => "the content hash has blanks around it".into(),
        };
        Err(format!(
            "{why}. Send the whole `content_hash` of the plan you reviewed, as GET /api/v1/plans/ID gives it"
        ))
    }
);

/// What counts as blank in [`Text`]: Rust's whitespace, and what JSON Schema's and Python's
/// `\s` add (U+FEFF, U+001C–U+001F), so that the pattern means the same to every client.
fn blank(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}' || ('\u{1c}'..='\u{1f}').contains(&c)
}

pattern_string!(
    /// Text with something in it (not only spaces).
    Text,
    "[^\\t\\n\\u000b\\f\\r \\u001c-\\u001f\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]",
    |raw| {
        if raw.chars().any(|c| !blank(c)) {
            Ok(())
        } else {
            Err("it is empty: write something".into())
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_a_whole_number_and_a_unit() {
        for ok in ["1s", "15m", "999999d", "2h"] {
            assert!(Duration::try_from(ok.to_owned()).is_ok(), "{ok}");
        }
        for bad in ["", "0s", "05m", "1h30m", "1000000s", "15", "m", " 1s", "1w"] {
            assert!(Duration::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        assert_eq!(
            Duration("15m".into()).parse().as_std(),
            std::time::Duration::from_secs(900)
        );
    }

    #[test]
    fn rates_are_n_per_unit_or_unlimited() {
        for ok in ["5/s", "100/m", "1/h", "unlimited", "999999/s"] {
            assert!(Rate::try_from(ok.to_owned()).is_ok(), "{ok}");
        }
        for bad in ["", "0/s", "5/d", "5", "/s", "1.5/s", "Unlimited", "05/s"] {
            assert!(Rate::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_must_hold_more_than_blanks() {
        assert!(Text::try_from("a".to_owned()).is_ok());
        assert!(Text::try_from(" x ".to_owned()).is_ok());
        for bad in ["", "  ", "\u{feff}", "\u{1c}\n", "\u{85}\u{3000}"] {
            assert!(Text::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts_take_whole_numbers_written_either_way() {
        let c: Count = serde_json::from_str("3").unwrap();
        assert_eq!(c.0, 3);
        let c: Count = serde_json::from_str("3.0").unwrap();
        assert_eq!(c.0, 3);
        for bad in ["0", "3.5", "-1", "1000001", "1e300"] {
            assert!(serde_json::from_str::<Count>(bad).is_err(), "{bad}");
        }
    }
}
