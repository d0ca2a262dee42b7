use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} `{name}` is longer than {max} characters")]
    TooLong {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error("{what} `{name}` contains `{bad}`; use {allowed}")]
    BadCharacter {
        what: &'static str,
        name: String,
        bad: char,
        allowed: &'static str,
    },
}

fn check_name(
    raw: &str,
    what: &'static str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(usize, char) -> bool,
) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty { what });
    }
    if raw.chars().count() > max {
        return Err(NameError::TooLong {
            what,
            name: raw.to_owned(),
            max,
        });
    }
    if let Some((_, bad)) = raw.char_indices().find(|&(i, c)| !ok(i, c)) {
        return Err(NameError::BadCharacter {
            what,
            name: raw.to_owned(),
            bad,
            allowed,
        });
    }
    Ok(())
}

macro_rules! string_name {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_name!(
    /// The name of an invariant: it identifies the invariant in the ledger, in metrics and in
    /// every command, so it is restricted to characters that need no quoting anywhere.
    InvariantName
);

impl InvariantName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(
            raw,
            "invariant name",
            128,
            "lowercase letters, digits, `-`, `_` and `.`, starting with a letter",
            |i, c| c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || "-_.".contains(c))),
        )?;
        Ok(Self(raw.to_owned()))
    }
}

string_name!(
    /// The name of an incident, as people type it in commands (`2026-11-25-billing-outage`).
    IncidentName
);

impl IncidentName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(
            raw,
            "incident name",
            128,
            "lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit",
            |i, c| c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && "-_.".contains(c)),
        )?;
        Ok(Self(raw.to_owned()))
    }
}

string_name!(
    /// The name of a configured source database.
    SourceName
);

impl SourceName {
    /// The prefix of an event log read as a source (`log:orders`).
    pub const LOG_PREFIX: &'static str = "log:";

    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if let Some(log) = raw.strip_prefix(Self::LOG_PREFIX) {
            return LogName::parse(log).map(|l| Self::of_log(&l));
        }
        check_name(
            raw,
            "source name",
            64,
            "lowercase letters, digits, `-` and `_`, starting with a letter",
            |i, c| c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || "-_".contains(c))),
        )?;
        Ok(Self(raw.to_owned()))
    }
}

impl SourceName {
    /// trueup's own event log `log`, read as a source.
    pub fn of_log(log: &LogName) -> Self {
        Self(format!("{}{log}", Self::LOG_PREFIX))
    }

    /// The event log this source reads, if it is one (`log:orders` → `orders`).
    pub fn log(&self) -> Option<&str> {
        self.0.strip_prefix(Self::LOG_PREFIX)
    }
}

string_name!(
    /// The name of a configured compensation target: a writable database connection or an
    /// HTTP base URL that approved actions may change.
    TargetName
);

impl TargetName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(
            raw,
            "target name",
            64,
            "lowercase letters, digits, `-` and `_`, starting with a letter",
            |i, c| c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || "-_".contains(c))),
        )?;
        Ok(Self(raw.to_owned()))
    }
}

string_name!(
    /// The name of one of trueup's event logs (`event_logs:` in trueup.yaml): it is part of
    /// the ingest URL (`/ingest/{log}`), of metric labels and of a side's `source: log:NAME`.
    LogName
);

impl LogName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(
            raw,
            "event log name",
            64,
            "lowercase letters, digits, `-` and `_`, starting with a letter",
            |i, c| c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || "-_".contains(c))),
        )?;
        Ok(Self(raw.to_owned()))
    }
}

string_name!(
    /// A result column named in an invariant (a key, a compared column, a time column).
    /// trueup quotes it when it builds `ORDER BY`, so it must be a plain identifier.
    ColumnName
);

impl ColumnName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(
            raw,
            "column name",
            63,
            "letters, digits and `_`, starting with a letter or `_` (alias the column in the query)",
            |i, c| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()),
        )?;
        Ok(Self(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariant_names_accept_the_usual_slug_forms() {
        for ok in ["payments-ledger", "a", "orders_v2.fulfilled"] {
            assert!(InvariantName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn invariant_names_reject_uppercase_spaces_and_leading_digits() {
        let err = InvariantName::parse("Payments ledger").unwrap_err();
        assert!(matches!(err, NameError::BadCharacter { bad: 'P', .. }));
        assert!(InvariantName::parse("1abc").is_err());
        assert!(InvariantName::parse("").is_err());
        assert!(InvariantName::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn an_event_log_is_named_as_a_source_with_the_log_prefix() {
        let s = SourceName::parse("log:orders").unwrap();
        assert_eq!((s.as_str(), s.log()), ("log:orders", Some("orders")));
        assert_eq!(SourceName::parse("shop").unwrap().log(), None);
        assert!(SourceName::parse("log:Orders").is_err());
        assert!(SourceName::parse("log:").is_err());
        assert!(SourceName::parse("shop:x").is_err());
    }

    #[test]
    fn column_names_must_be_plain_identifiers() {
        assert!(ColumnName::parse("order_id").is_ok());
        assert!(ColumnName::parse("OrderId").is_ok());
        let err = ColumnName::parse("id\"; drop").unwrap_err();
        assert!(err.to_string().contains("alias the column"), "{err}");
    }
}
