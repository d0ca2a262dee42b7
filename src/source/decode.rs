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

/// A value the database holds that has no counterpart trueup can compare: the error says
/// which one and how to map it in the query, for the column it is found in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unrepresentable {
    /// PostgreSQL `infinity` / `-infinity` dates and timestamps.
    #[error("infinite")]
    Infinite { value: &'static str },
    /// A date or time beyond what trueup's calendar covers (years ±262,143, or 24:00:00).
    #[error("out of range")]
    OutOfRange {
        value: String,
        /// The engine's text type to cast to (`TEXT`, or `CHAR` on MySQL).
        text_type: &'static str,
    },
    /// JSON holding a number a double does not keep (see
    /// [`crate::domain::inexact_json_number`]).
    #[error("inexact JSON number")]
    InexactJson {
        number: String,
        text_type: &'static str,
    },
    /// JSON with an object holding a member twice (see
    /// [`crate::domain::repeated_json_member`]).
    #[error("repeated JSON member")]
    RepeatedJsonMember {
        member: String,
        text_type: &'static str,
    },
}

impl Unrepresentable {
    fn explain(&self, column: &str) -> String {
        let q = |c: &str| c.replace('"', "\"\"");
        match self {
            Self::Infinite { value } => format!(
                "holds `{value}`, which is no point in time trueup can compare; map it in the query, \
                 to NULL with `CASE WHEN isfinite(\"{c}\") THEN \"{c}\" END AS \"{c}\"` or to text with \
                 `\"{c}\"::text AS \"{c}\"`",
                c = q(column)
            ),
            Self::OutOfRange { value, text_type } => format!(
                "holds {value}, outside the dates and times trueup can compare; map it in the query, \
                 e.g. read it as text with `CAST({column} AS {text_type}) AS {column}`"
            ),
            Self::InexactJson { number, text_type } => format!(
                "holds JSON with the number {number}, which has more digits than trueup's JSON \
                 numbers keep (a double's), so two different values would compare equal; compare \
                 it as written, reading it as text with `CAST({column} AS {text_type}) AS {column}`"
            ),
            Self::RepeatedJsonMember { member, text_type } => format!(
                "holds JSON with an object that has the member \"{member}\" twice, which engines \
                 read differently (PostgreSQL keeps the last, MySQL/MariaDB and SQLite the first); \
                 compare it as written, reading it as text with \
                 `CAST({column} AS {text_type}) AS {column}`"
            ),
        }
    }
}

/// JSON text as a JSON value, every number in it kept exactly and no member repeated, or
/// refused (see [`Unrepresentable::InexactJson`] and [`Unrepresentable::RepeatedJsonMember`]);
/// `text_type` names the engine's text type.
pub(crate) fn exact_json(
    text: &[u8],
    text_type: &'static str,
) -> Result<serde_json::Value, sqlx::error::BoxDynError> {
    let json = serde_json::from_slice(text)?;
    // Valid JSON is UTF-8.
    let text = std::str::from_utf8(text)?;
    if let Some(number) = crate::domain::inexact_json_number(text) {
        return Err(Unrepresentable::InexactJson {
            number: number.to_owned(),
            text_type,
        }
        .into());
    }
    if let Some(member) = crate::domain::repeated_json_member(text) {
        return Err(Unrepresentable::RepeatedJsonMember { member, text_type }.into());
    }
    Ok(json)
}

pub(crate) fn decode_error(
    source: &SourceName,
    column: &str,
    e: sqlx::error::BoxDynError,
) -> SourceError {
    let message = match e.downcast_ref::<Unrepresentable>() {
        Some(u) => u.explain(column),
        None => format!("{e}; cast the column to text in the query if its values do not fit"),
    };
    SourceError::Decode {
        source_name: source.clone(),
        column: column.to_owned(),
        message,
    }
}

/// A decimal written as text (`-12.50`, `100`, `0.001`), read exactly: trailing zeros after
/// the point are dropped first (a `DECIMAL(65,30)`'s `1.000…0` is 1), and a value with more
/// digits than trueup's decimals hold (28 after the point, 96 bits in all, zeros before the
/// point included) is refused, never rounded: two values that differ past the last digit kept would compare
/// equal. `type_name` names the column's type in the refusal.
pub(crate) fn exact_decimal(
    type_name: &str,
    text: &str,
) -> Result<rust_decimal::Decimal, sqlx::error::BoxDynError> {
    let digits = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.'),
        false => text,
    };
    rust_decimal::Decimal::from_str_exact(digits).map_err(|_| {
        format!(
            "{type_name} {digits} has more digits than trueup's decimals hold (at most 28 after the point, 96 bits in all)"
        )
        .into()
    })
}

/// PostgreSQL's binary dates, times and timestamps, with every value the server can send
/// either read or refused as [`Unrepresentable`] (the driver's own decoding panics on
/// `infinity` and on years past chrono's range).
pub(crate) mod pg_time {
    use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

    use super::Unrepresentable;

    /// 2000-01-01, PostgreSQL's epoch, as days since 0001-01-01 (chrono's day 1).
    const EPOCH_DAYS_FROM_CE: i32 = 730_120;
    /// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
    const EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

    fn be<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
        bytes
            .try_into()
            .map_err(|_| format!("expected {N} bytes, got {}", bytes.len()))
    }

    pub(crate) fn date(bytes: &[u8]) -> Result<NaiveDate, sqlx::error::BoxDynError> {
        let days = i32::from_be_bytes(be(bytes)?);
        match days {
            i32::MAX => Err(Unrepresentable::Infinite { value: "infinity" }.into()),
            i32::MIN => Err(Unrepresentable::Infinite { value: "-infinity" }.into()),
            _ => days
                .checked_add(EPOCH_DAYS_FROM_CE)
                .and_then(NaiveDate::from_num_days_from_ce_opt)
                .ok_or_else(|| {
                    Unrepresentable::OutOfRange {
                        value: format!("a date {days} days from 2000-01-01"),
                        text_type: "TEXT",
                    }
                    .into()
                }),
        }
    }

    pub(crate) fn timestamp(bytes: &[u8]) -> Result<DateTime<Utc>, sqlx::error::BoxDynError> {
        let micros = i64::from_be_bytes(be(bytes)?);
        match micros {
            i64::MAX => Err(Unrepresentable::Infinite { value: "infinity" }.into()),
            i64::MIN => Err(Unrepresentable::Infinite { value: "-infinity" }.into()),
            _ => micros
                .checked_add(EPOCH_UNIX_MICROS)
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(|| {
                    Unrepresentable::OutOfRange {
                        value: format!("a timestamp {micros} µs from 2000-01-01"),
                        text_type: "TEXT",
                    }
                    .into()
                }),
        }
    }

    pub(crate) fn time(bytes: &[u8]) -> Result<NaiveTime, sqlx::error::BoxDynError> {
        let micros = i64::from_be_bytes(be(bytes)?);
        let secs = u32::try_from(micros.div_euclid(1_000_000)).ok();
        let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1_000).ok();
        secs.zip(nanos)
            .and_then(|(s, n)| NaiveTime::from_num_seconds_from_midnight_opt(s, n))
            .filter(|_| micros < 86_400_000_000)
            .ok_or_else(|| {
                Unrepresentable::OutOfRange {
                    value: if micros == 86_400_000_000 {
                        "24:00:00".to_owned()
                    } else {
                        format!("a time of {micros} µs")
                    },
                    text_type: "TEXT",
                }
                .into()
            })
    }
}

pub(crate) fn unsupported(source: &SourceName, column: &str, db_type: &str) -> SourceError {
    SourceError::UnsupportedType {
        source_name: source.clone(),
        column: column.to_owned(),
        db_type: db_type.to_owned(),
    }
}

/// The text forms of dates and times a SQLite column may hold, digit for digit. chrono's
/// parser alone is lenient: it takes `2026-3-1` and ` 2026-03-01` for 2026-03-01 (which
/// SQLite's own `date()` refuses), and drops fraction digits past the ninth, so two different
/// texts would read as one instant.
static SQLITE_SHAPES: std::sync::LazyLock<[regex::Regex; 3]> = std::sync::LazyLock::new(|| {
    const DATE: &str = "[0-9]{4}-[0-9]{2}-[0-9]{2}";
    const TIME: &str = "[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\\.[0-9]{1,9})?";
    [
        format!("^{DATE}$"),
        format!("^{TIME}$"),
        // As SQLite reads them: `T` or spaces between date and time, a zone (`Z`, `z` or
        // `±HH:MM`, after a space or not).
        format!(
            "^{DATE}(?:T| +)[0-9]{{2}}:[0-9]{{2}}(?::[0-9]{{2}}(?:\\.[0-9]{{1,9}})?)? ?(?:[Zz]|[+-][0-9]{{2}}:[0-9]{{2}})?$"
        ),
    ]
    .map(|shape| regex::Regex::new(&shape).expect("a fixed pattern"))
});

/// Reads SQLite text as the declared date/time type when it is one, written in full (see
/// [`SQLITE_SHAPES`]); otherwise keeps it as text, which equals no date or time.
pub(crate) fn sqlite_text(text: &str, hint: SqliteHint) -> Value {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
    let [date, time, datetime] = &*SQLITE_SHAPES;
    let shaped = match hint {
        SqliteHint::Date => date.is_match(text),
        SqliteHint::Time => time.is_match(text),
        SqliteHint::Datetime => datetime.is_match(text),
        SqliteHint::Bool | SqliteHint::None => false,
    };
    if !shaped {
        return Value::Text(text.into());
    }
    match hint {
        SqliteHint::Datetime => {
            if let Ok(t) = DateTime::parse_from_rfc3339(text) {
                return Value::Timestamp(t.to_utc());
            }
            for fmt in [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M",
            ] {
                if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
                    return Value::Timestamp(t.and_utc());
                }
            }
            for fmt in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
                if let Ok(t) = DateTime::parse_from_str(text, fmt) {
                    return Value::Timestamp(t.to_utc());
                }
            }
            Value::Text(text.into())
        }
        SqliteHint::Date => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(Value::Date)
            .unwrap_or_else(|_| Value::Text(text.into())),
        SqliteHint::Time => NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
            .map(Value::Time)
            .unwrap_or_else(|_| Value::Text(text.into())),
        SqliteHint::Bool | SqliteHint::None => Value::Text(text.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn a_decimal_text_reads_exactly_without_its_trailing_zeros_or_not_at_all() {
        let read = |t: &str| exact_decimal("DECIMAL", t).map(|d| d.to_string());
        assert_eq!(read("1.000000000000000000000000000000").unwrap(), "1");
        assert_eq!(read("100").unwrap(), "100");
        assert_eq!(read("100.00").unwrap(), "100");
        assert_eq!(read("-12.50").unwrap(), "-12.5");
        assert_eq!(read("0.000").unwrap(), "0");
        assert_eq!(
            read("0.12345678901234567890123456780000").unwrap(),
            "0.1234567890123456789012345678"
        );
        assert_eq!(
            read("0.1234567890123456789012345678901")
                .unwrap_err()
                .to_string(),
            "DECIMAL 0.1234567890123456789012345678901 has more digits than trueup's decimals hold (at most 28 after the point, 96 bits in all)"
        );
        assert!(read("79228162514264337593543950336").is_err());
    }

    #[test]
    fn sqlite_datetimes_in_the_usual_text_forms_become_instants() {
        let want = Value::Timestamp(Utc.with_ymd_and_hms(2026, 3, 1, 12, 30, 0).unwrap());
        for text in [
            "2026-03-01 12:30:00",
            "2026-03-01T12:30:00Z",
            "2026-03-01 14:30:00+02:00",
            "2026-03-01T12:30:00.000",
        ] {
            assert_eq!(sqlite_text(text, SqliteHint::Datetime), want, "{text}");
        }
    }

    #[test]
    fn postgres_infinities_and_dates_past_the_calendar_are_refused_not_wrapped() {
        let explain = |e: sqlx::error::BoxDynError| {
            e.downcast_ref::<Unrepresentable>()
                .map(|u| u.explain("t"))
                .unwrap_or_else(|| panic!("{e}"))
        };
        let ts = |micros: i64| pg_time::timestamp(&micros.to_be_bytes());
        assert_eq!(ts(0).unwrap().to_rfc3339(), "2000-01-01T00:00:00+00:00");
        assert_eq!(
            ts(-1).unwrap().to_rfc3339(),
            "1999-12-31T23:59:59.999999+00:00"
        );
        assert!(explain(ts(i64::MAX).unwrap_err()).contains("holds `infinity`"));
        assert!(explain(ts(i64::MIN).unwrap_err()).contains("holds `-infinity`"));
        // 294276 AD, PostgreSQL's last timestamp, is past chrono's calendar.
        assert!(explain(ts(9_223_371_331_199_999_999).unwrap_err()).contains("CAST(t AS TEXT)"));

        let date = |days: i32| pg_time::date(&days.to_be_bytes());
        assert_eq!(date(-1).unwrap().to_string(), "1999-12-31");
        assert!(explain(date(i32::MAX).unwrap_err()).contains("isfinite(\"t\")"));
        assert!(explain(date(2_000_000_000).unwrap_err()).contains("outside"));

        let time = |micros: i64| pg_time::time(&micros.to_be_bytes());
        assert_eq!(time(86_399_999_999).unwrap().to_string(), "23:59:59.999999");
        assert!(explain(time(86_400_000_000).unwrap_err()).contains("holds 24:00:00"));
        assert!(pg_time::date(&[0, 1]).is_err(), "a short value is an error");
    }

    #[test]
    fn sqlite_text_that_is_not_a_date_written_in_full_stays_text() {
        for (text, hint) in [
            ("soon", SqliteHint::Datetime),
            // chrono alone would read these as 2026-03-01 (and 12:30:00.123456789).
            ("2026-3-1", SqliteHint::Date),
            (" 2026-03-01", SqliteHint::Date),
            ("2026-03-01 ", SqliteHint::Date),
            ("2026-03-01 12:30", SqliteHint::Date),
            ("12:30:00.1234567891", SqliteHint::Time),
            ("2026-03-01 12:30:00.1234567891", SqliteHint::Datetime),
            ("2026-03-01 2:30:00", SqliteHint::Datetime),
            ("2026-03-01t12:30:00", SqliteHint::Datetime),
            ("2026-03-01 12:30:00+0200", SqliteHint::Datetime),
            ("2026-03-01 12:30:00  +02:00", SqliteHint::Datetime),
            ("１２:30:00", SqliteHint::Time),
        ] {
            assert_eq!(sqlite_text(text, hint), Value::Text(text.into()), "{text}");
        }
        let read = |text, hint| sqlite_text(text, hint).to_string();
        assert_eq!(read("2026-03-01", SqliteHint::Date), "2026-03-01");
        assert_eq!(
            read("12:30:00.123456789", SqliteHint::Time),
            "12:30:00.123456789"
        );
        for text in [
            "2026-03-01 14:30:00+02:00",
            "2026-03-01 14:30:00 +02:00",
            "2026-03-01  12:30:00",
            "2026-03-01T12:30:00z",
            "2026-03-01 12:30:00 Z",
        ] {
            assert_eq!(
                read(text, SqliteHint::Datetime),
                read("2026-03-01T12:30:00Z", SqliteHint::Datetime),
                "{text}"
            );
        }
    }
}
