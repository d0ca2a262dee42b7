//! Database types → [`Value`]. Each engine maps its type names to a [`Kind`] once per query,
//! then decodes every value of that column the same way.

use crate::domain::{SourceName, Value};

use super::SourceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    I16,
    I32,
    I64,
    U64,
    U32,
    Decimal,
    F32,
    F64,
    Text,
    /// PostgreSQL `CHAR(n)`: blank-padded, read without the padding.
    PaddedText,
    Uuid,
    Date,
    Time,
    /// A timestamp without time zone, read as UTC.
    Naive,
    Timestamp,
    Json,
    Bytes,
    /// SQLite: the value's own storage class decides, with the declared type as a hint.
    Dynamic(SqliteHint),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SqliteHint {
    None,
    Bool,
    Date,
    Time,
    Datetime,
}

impl Kind {
    /// Text-like kinds are sorted with a byte-wise collation.
    pub(crate) fn is_text(self) -> bool {
        matches!(self, Kind::Text | Kind::PaddedText | Kind::Json)
    }
}

pub(crate) fn decode_error(
    source: &SourceName,
    column: &str,
    e: impl std::fmt::Display,
) -> SourceError {
    SourceError::Decode {
        source_name: source.clone(),
        column: column.to_owned(),
        message: format!("{e}; cast the column to text in the query if its values do not fit"),
    }
}

pub(crate) fn unsupported(source: &SourceName, column: &str, db_type: &str) -> SourceError {
    SourceError::UnsupportedType {
        source_name: source.clone(),
        column: column.to_owned(),
        db_type: db_type.to_owned(),
    }
}

/// Reads SQLite text as the declared date/time type when it parses as one; otherwise keeps it.
pub(crate) fn sqlite_text(text: String, hint: SqliteHint) -> Value {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
    match hint {
        SqliteHint::Datetime => {
            if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
                return Value::Timestamp(t.to_utc());
            }
            for fmt in [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M",
            ] {
                if let Ok(t) = NaiveDateTime::parse_from_str(&text, fmt) {
                    return Value::Timestamp(t.and_utc());
                }
            }
            for fmt in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
                if let Ok(t) = DateTime::parse_from_str(&text, fmt) {
                    return Value::Timestamp(t.to_utc());
                }
            }
            Value::Text(text)
        }
        SqliteHint::Date => NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .map(Value::Date)
            .unwrap_or(Value::Text(text)),
        SqliteHint::Time => NaiveTime::parse_from_str(&text, "%H:%M:%S%.f")
            .map(Value::Time)
            .unwrap_or(Value::Text(text)),
        SqliteHint::Bool | SqliteHint::None => Value::Text(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn sqlite_datetimes_in_the_usual_text_forms_become_instants() {
        let want = Value::Timestamp(Utc.with_ymd_and_hms(2026, 3, 1, 12, 30, 0).unwrap());
        for text in [
            "2026-03-01 12:30:00",
            "2026-03-01T12:30:00Z",
            "2026-03-01 14:30:00+02:00",
            "2026-03-01T12:30:00.000",
        ] {
            assert_eq!(
                sqlite_text(text.into(), SqliteHint::Datetime),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn sqlite_text_that_is_not_a_date_stays_text() {
        assert_eq!(
            sqlite_text("soon".into(), SqliteHint::Datetime),
            Value::Text("soon".into())
        );
    }
}
