//! The row-value model: what trueup reads from any engine, and how it compares values.
//!
//! Comparison rules (the same for every engine pair):
//! - integers of any width, `NUMERIC`/`DECIMAL` and floats compare by numeric value
//!   (`10.50 = 10.5`, `INT 5 = BIGINT 5 = NUMERIC 5.0`);
//! - text compares exactly, byte by byte (no collation, no trailing-space padding; PostgreSQL
//!   `CHAR(n)` padding is removed when read, as MySQL does), and equals bytes that hold its
//!   UTF-8 form: a MySQL/MariaDB text column in a binary collation (`utf8mb4_bin`) is read as
//!   bytes, since sqlx does not say a column's collation, and means the same text;
//! - timestamps compare as instants in UTC (a timestamp without time zone is read as UTC);
//! - booleans compare with booleans, and with the integers 0 and 1 (MySQL `TINYINT(1)`);
//! - `NULL` equals `NULL` when comparing columns (like `IS NOT DISTINCT FROM`), and differs
//!   from every value. (Rows with a NULL key never reach a comparison: the merge skips them.)
//! - JSON compares structurally, also against text (or bytes, as above) holding JSON;
//! - values of different classes (text and number, say) are never equal, text and bytes
//!   (and JSON) aside.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use compact_str::CompactString;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// Serialized only where trueup spills rows to its own temporary files (an external sort).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Decimal(Decimal),
    Float(f64),
    /// Inline up to 24 bytes: most compared texts (codes, currencies, statuses, short ids)
    /// are short, and a heap allocation per text value showed in a 10M-row profile.
    Text(CompactString),
    Bytes(Vec<u8>),
    Date(NaiveDate),
    Time(NaiveTime),
    Timestamp(DateTime<Utc>),
    /// Boxed: a JSON value is several times the size of every other variant, and every
    /// value of every row would be that large with it inline.
    Json(Box<serde_json::Value>),
    /// A text or bytes value too long to bring over whole, as the database described it: its
    /// length, a SHA-256 of all of it and its start. It compares equal to the whole value it
    /// stands for (by digest), and to another digest of the same value; text and bytes alike
    /// (text equals the bytes of its UTF-8 form).
    Digest(Box<Digested>),
}

/// What trueup keeps of a long value: enough to compare it and to show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Digested {
    /// [`ValueClass::Text`] or [`ValueClass::Bytes`].
    pub class: ValueClass,
    /// Length of the whole value, in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole value (its UTF-8 bytes for text), in lowercase hex.
    pub sha256: String,
    /// Its start as evidence shows it (text, or `\\x` and hex for bytes), at most
    /// [`EVIDENCE_VALUE_CAP`] bytes.
    pub prefix: String,
}

impl Digested {
    pub fn of_text(s: &str) -> Self {
        use sha2::{Digest, Sha256};
        Self {
            class: ValueClass::Text,
            bytes: s.len() as u64,
            sha256: hex::encode(Sha256::digest(s.as_bytes())),
            prefix: text_prefix(s).to_owned(),
        }
    }

    pub fn of_bytes(b: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self {
            class: ValueClass::Bytes,
            bytes: b.len() as u64,
            sha256: hex::encode(Sha256::digest(b)),
            prefix: bytes_prefix(b),
        }
    }

    /// The stand-in evidence shows: `{"$capped": {"prefix", "bytes", "sha256"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ CAPPED: {
            "prefix": self.prefix,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }})
    }

    /// Whether `whole` is the value this digest stands for.
    fn is_digest_of(&self, whole: &Value) -> bool {
        use sha2::{Digest, Sha256};
        // Of text or of bytes alike (see `Value::same_as`): a digest is of the raw bytes.
        let raw: &[u8] = match whole {
            Value::Text(t) => t.as_bytes(),
            Value::Bytes(b) => b,
            _ => return false,
        };
        raw.len() as u64 == self.bytes && hex::encode(Sha256::digest(raw)) == self.sha256
    }
}

/// Whether text `t` is JSON equal to `json` (compared structurally). Text holding a number a
/// double does not keep exactly, or an object with a member twice, equals no JSON trueup read
/// (which has neither).
fn holds_json(t: &str, json: &serde_json::Value) -> bool {
    inexact_json_number(t).is_none()
        && repeated_json_member(t).is_none()
        && serde_json::from_str::<serde_json::Value>(t).is_ok_and(|p| json_same(&p, json))
}

/// Two JSON values alike: objects by their members in any order, arrays in order, numbers
/// by value (`1 = 1.0`, as PostgreSQL's `jsonb` says; each number is exact, see
/// [`inexact_json_number`]).
fn json_same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => json_number(x).key_cmp(&json_number(y)) == Ordering::Equal,
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_same(x, y))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_same(v, w)))
        }
        _ => a == b,
    }
}

/// A decimal as canonical JSON: a number when it is an integer that fits 64 bits, else its
/// text (a JSON number would be a double).
fn decimal_json(d: Decimal) -> serde_json::Value {
    let n = d.normalize();
    match n.to_i64() {
        Some(i) if n.scale() == 0 => serde_json::Value::from(i),
        _ => serde_json::Value::String(n.to_string()),
    }
}

/// A JSON number as the number it is: an integer, a decimal past an `i64`, or a float.
fn json_number(n: &serde_json::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::Int(i)
    } else if let Some(u) = n.as_u64() {
        Value::Decimal(Decimal::from(u))
    } else {
        Value::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// The first number in JSON text `text` that a JSON value does not keep exactly: an integer
/// past 64 bits, or one with a fraction or an exponent that is not the number the double
/// nearest it stands for ([`float_as_decimal`]: `0.1` is kept, `0.1000000000000000001` and
/// `36028797018963970.0`, read as 2^55, are not). Such a number reads
/// as that double, so two different numbers would read alike. (serde_json reads doubles
/// correctly rounded: its `float_roundtrip` feature.)
pub(crate) fn inexact_json_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len()
                && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            let number = &text[start..i];
            if !json_number_is_exact(number) {
                return Some(number);
            }
            continue;
        }
        i += 1;
    }
    None
}

fn json_number_is_exact(number: &str) -> bool {
    if !number.contains(['.', 'e', 'E']) {
        return number.parse::<i64>().is_ok() || number.parse::<u64>().is_ok();
    }
    let Ok(f) = number.parse::<f64>() else {
        return false;
    };
    // The number the double stands for where it compares with others, else (past a
    // decimal) its shortest digits, by which doubles tell each other apart. (So a whole
    // double past 2^53 printed by its shortest digits, `3.602879701896397e16` for 2^55, is
    // refused: as a decimal that numeral is another number, 36028797018963970.)
    let written = decimal_digits(number);
    let stands_for = match float_as_decimal(f) {
        Some(d) => decimal_digits(&d.to_string()),
        None => decimal_digits(&format!("{f:e}")),
    };
    f.is_finite() && written.is_some() && written == stands_for
}

/// A decimal numeral (`-12.50e3`, `1.2e-7`) as its sign, significant digits and the power of
/// ten of the last one: equal for equal values (zero is one value, of either sign).
fn decimal_digits(numeral: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match numeral.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, numeral),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let trimmed = digits.trim_start_matches('0');
    let significant = trimmed.trim_end_matches('0');
    if significant.is_empty() {
        return Some((false, String::new(), 0));
    }
    // (serde_json takes any exponent, `0.5e-9223372036854775808` included.)
    let power = exponent
        .checked_sub(i64::try_from(fraction.len()).ok()?)?
        .checked_add(i64::try_from(trimmed.len() - significant.len()).ok()?)?;
    Some((negative, significant.to_owned(), power))
}

/// The first member name that an object in JSON text `text` holds twice, if any. Engines read
/// such an object differently (PostgreSQL and serde_json keep the last value, MariaDB and
/// SQLite the first), so it is no one value. (`None` too for text that is no JSON.)
pub(crate) fn repeated_json_member(text: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;
    /// Walks a JSON value, noting the first repeated member name and stopping there.
    #[derive(Clone, Copy)]
    struct Walk<'a>(&'a RefCell<Option<String>>);
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut names = std::collections::HashSet::new();
            while let Some(name) = map.next_key::<String>()? {
                if !names.insert(name.clone()) {
                    *self.0.borrow_mut() = Some(name);
                    return Err(A::Error::custom("a repeated member"));
                }
                map.next_value_seed(self)?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let repeated = RefCell::new(None);
    let mut reader = serde_json::Deserializer::from_str(text);
    let _ = Walk(&repeated).deserialize(&mut reader);
    repeated.into_inner()
}

/// The start of a text, at most [`EVIDENCE_VALUE_CAP`] bytes, cut at a character boundary.
pub fn text_prefix(s: &str) -> &str {
    &s[..s.floor_char_boundary(EVIDENCE_VALUE_CAP)]
}

/// The start of bytes as evidence shows them (`\\x` and hex), at most [`EVIDENCE_VALUE_CAP`].
pub fn bytes_prefix(b: &[u8]) -> String {
    format!(
        "\\x{}",
        hex::encode(&b[..b.len().min((EVIDENCE_VALUE_CAP - 2) / 2)])
    )
}

/// The comparison class of a value. Keys of different classes cannot be merged because every
/// engine orders them differently; trueup refuses such a pair instead of guessing.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ValueClass {
    Null,
    Bool,
    Number,
    Text,
    Bytes,
    Date,
    Time,
    Timestamp,
    Json,
}

impl fmt::Display for ValueClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueClass::Null => "null",
            ValueClass::Bool => "boolean",
            ValueClass::Number => "number",
            ValueClass::Text => "text",
            ValueClass::Bytes => "bytes",
            ValueClass::Date => "date",
            ValueClass::Time => "time",
            ValueClass::Timestamp => "timestamp",
            ValueClass::Json => "json",
        })
    }
}

impl Value {
    pub fn class(&self) -> ValueClass {
        match self {
            Value::Null => ValueClass::Null,
            Value::Bool(_) => ValueClass::Bool,
            Value::Int(_) | Value::Decimal(_) | Value::Float(_) => ValueClass::Number,
            Value::Text(_) => ValueClass::Text,
            Value::Bytes(_) => ValueClass::Bytes,
            Value::Date(_) => ValueClass::Date,
            Value::Time(_) => ValueClass::Time,
            Value::Timestamp(_) => ValueClass::Timestamp,
            Value::Json(_) => ValueClass::Json,
            Value::Digest(d) => d.class,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Total order used to merge keys. Within a class it is the order every engine produces
    /// for the `ORDER BY` trueup writes (numeric; byte-wise text; instants); across classes it
    /// follows the class order, with NULL first.
    pub fn key_cmp(&self, other: &Value) -> Ordering {
        use Value::*;
        match (self, other) {
            (Int(a), Int(b)) => a.cmp(b),
            (Text(a), Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Bool(a), Bool(b)) => a.cmp(b),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Date(a), Date(b)) => a.cmp(b),
            (Time(a), Time(b)) => a.cmp(b),
            (Timestamp(a), Timestamp(b)) => a.cmp(b),
            (Json(a), Json(b)) => a.to_string().cmp(&b.to_string()),
            // Never a key (keys are read whole); a total order all the same.
            (Digest(a), Digest(b)) => {
                (&a.prefix, a.bytes, &a.sha256).cmp(&(&b.prefix, b.bytes, &b.sha256))
            }
            (a, b) if a.class() == ValueClass::Number && b.class() == ValueClass::Number => {
                numeric_cmp(a, b)
            }
            (a, b) => a.class().cmp(&b.class()),
        }
    }

    /// Whether two column values are the same business value (see the module comment).
    pub fn same_as(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Null, _) | (_, Null) => false,
            (Bool(a), Int(b)) | (Int(b), Bool(a)) => (*b == 0 && !a) || (*b == 1 && *a),
            (Json(a), Json(b)) => json_same(a, b),
            // Of text or of bytes alike, as below.
            (Digest(a), Digest(b)) => a.bytes == b.bytes && a.sha256 == b.sha256,
            (Digest(d), whole) | (whole, Digest(d)) => d.is_digest_of(whole),
            (Json(j), Text(t)) | (Text(t), Json(j)) => holds_json(t, j),
            (Text(t), Bytes(b)) | (Bytes(b), Text(t)) => t.as_bytes() == b.as_slice(),
            // MariaDB's JSON is text in `utf8mb4_bin`, which reads as bytes (as above).
            (Json(j), Bytes(b)) | (Bytes(b), Json(j)) => {
                std::str::from_utf8(b).is_ok_and(|t| holds_json(t, j))
            }
            _ => self.class() == other.class() && self.key_cmp(other) == Ordering::Equal,
        }
    }

    /// A canonical JSON form used for fingerprints and evidence: the same business value read
    /// from different engines gives the same JSON (`5`, `5.0` and `5.00` all become `5`).
    pub fn to_canonical_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Decimal(d) => decimal_json(*d),
            // A whole float is written as the integer it equals (as an integer or a decimal
            // holding it is), so that its key reads back the same from either.
            Value::Float(f) if f.fract() == 0.0 => match float_as_decimal(*f) {
                Some(d) => decimal_json(d),
                None => serde_json::Number::from_f64(*f)
                    .map_or_else(|| J::String(f.to_string()), J::Number),
            },
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or_else(|| J::String(f.to_string()), J::Number)
            }
            Value::Text(s) => J::String(s.as_str().to_owned()),
            Value::Bytes(b) => J::String(format!("\\x{}", hex::encode(b))),
            Value::Date(d) => J::String(d.to_string()),
            Value::Time(t) => J::String(t.to_string()),
            Value::Timestamp(t) => J::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Value::Json(j) => (**j).clone(),
            Value::Digest(d) => d.to_json(),
        }
    }

    /// Roughly how many bytes the value holds: for the per-row size cap and for sizing
    /// batches, not an exact allocation count.
    pub fn size(&self) -> usize {
        match self {
            Value::Text(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Json(j) => json_size(j),
            Value::Digest(d) => d.prefix.len() + 96,
            _ => 16,
        }
    }

    /// The value as evidence (stored with a violation, printed, sent): its canonical JSON
    /// when that is at most [`EVIDENCE_VALUE_CAP`] bytes of text, else a stand-in that keeps
    /// the start, the whole length and a digest of the whole,
    /// `{"$capped": {"prefix": "...", "bytes": 10485760, "sha256": "..."}}`. Comparisons
    /// never read evidence: they use the whole value.
    pub fn to_evidence_json(&self) -> serde_json::Value {
        match self {
            Value::Text(s) if s.len() > EVIDENCE_VALUE_CAP => Digested::of_text(s).to_json(),
            Value::Bytes(b) if 2 + 2 * b.len() > EVIDENCE_VALUE_CAP => {
                Digested::of_bytes(b).to_json()
            }
            Value::Json(j) if json_size(j) > EVIDENCE_VALUE_CAP => {
                let text = j.to_string();
                if text.len() <= EVIDENCE_VALUE_CAP {
                    return (**j).clone();
                }
                Digested::of_text(&text).to_json()
            }
            other => other.to_canonical_json(),
        }
    }

    pub fn as_timestamp(&self) -> Option<DateTime<Utc>> {
        match self {
            Value::Timestamp(t) => Some(*t),
            Value::Date(d) => d.and_hms_opt(0, 0, 0).map(|n| n.and_utc()),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// How many bytes of a value's text evidence keeps; a longer value is stored, printed and
/// sent as its start, its length and its digest.
pub const EVIDENCE_VALUE_CAP: usize = 4096;

/// The key of the stand-in for a value longer than [`EVIDENCE_VALUE_CAP`].
pub const CAPPED: &str = "$capped";

/// Whether an evidence value is the stand-in for a capped one (not the value itself).
pub fn is_capped(evidence_value: &serde_json::Value) -> bool {
    evidence_value
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key(CAPPED))
}

/// Roughly the bytes of a JSON value's text, without writing it out.
pub fn json_size(j: &serde_json::Value) -> usize {
    match j {
        serde_json::Value::String(s) => s.len() + 2,
        serde_json::Value::Array(a) => 2 + a.iter().map(|v| json_size(v) + 1).sum::<usize>(),
        serde_json::Value::Object(o) => {
            2 + o
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
        }
        _ => 8,
    }
}

/// Numbers compare by value. Integers and decimals exactly; a float as the decimal it
/// stands for ([`float_as_decimal`]: a whole number exactly, else what it prints as, `0.1`),
/// so that a decimal equals a float only when it is that decimal, and an integer only when
/// the float is that integer. (Compared as
/// doubles, `9007199254740993` equalled `9007199254740992.0`, and `0.100000000000000000001`
/// equalled `0.1`.) Each number stands for one decimal, and floats for theirs in their order,
/// so the order is total; NaN sorts last, and `-0.0 = 0.0`, as databases say.
fn numeric_cmp(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => float_cmp(*x, *y),
        (Value::Float(f), n) => float_against(*f, n),
        (n, Value::Float(f)) => float_against(*f, n).reverse(),
        _ => match (as_decimal(a), as_decimal(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            // Never two numbers that are not floats; a total order all the same.
            _ => Ordering::Equal,
        },
    }
}

fn float_cmp(x: f64, y: f64) -> Ordering {
    x.partial_cmp(&y)
        .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
}

/// Where float `f` lies against `n`, an integer or a decimal.
fn float_against(f: f64, n: &Value) -> Ordering {
    let Some(exact) = as_decimal(n) else {
        return Ordering::Equal;
    };
    if f.is_nan() {
        return Ordering::Greater;
    }
    if let Some(d) = float_as_decimal(f) {
        return d.cmp(&exact);
    }
    // A float past a decimal's range (beyond 7.9e28, or more than 28 digits after the point)
    // is no integer or decimal: ordered as a double (the decimal correctly rounded, from its
    // text), and on a tie by its sign (never equal).
    let rounded = exact.to_string().parse::<f64>().unwrap_or(0.0);
    match f.partial_cmp(&rounded) {
        Some(Ordering::Equal) | None if f > 0.0 => Ordering::Greater,
        Some(Ordering::Equal) | None => Ordering::Less,
        Some(o) => o,
    }
}

/// The decimal float `f` stands for, if a decimal can hold it: a whole number exactly
/// (`2^55` is 36028797018963968; `1e23` as a double is 99999999999999991611392), else the
/// shortest decimal that reads back as `f` (Rust prints a float so: `0.1`). Each lies in the
/// float's own rounding interval, so floats keep their order among decimals. `None` for
/// NaN, ±infinity and floats past a decimal's range or scale.
pub(crate) fn float_as_decimal(f: f64) -> Option<Decimal> {
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 {
        // Below 2^127 a whole double converts to i128 exactly; a decimal holds less.
        return (f.abs() < 1e38)
            .then(|| Decimal::try_from_i128_with_scale(f as i128, 0).ok())
            .flatten();
    }
    Decimal::from_str_exact(&f.to_string()).ok()
}

fn as_decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::Int(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_canonical_json() {
            serde_json::Value::String(s) => f.write_str(&s),
            serde_json::Value::Null => f.write_str("NULL"),
            other => write!(f, "{other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn a_digest_equals_the_whole_value_it_stands_for_and_nothing_else() {
        let whole = "z".repeat(100_000);
        let d = Value::Digest(Box::new(Digested::of_text(&whole)));
        assert!(d.same_as(&Value::Text(whole.as_str().into())));
        assert!(Value::Text(whole.as_str().into()).same_as(&d));
        assert!(d.same_as(&d.clone()));
        let other = format!("{}y", &whole[1..]);
        assert!(!d.same_as(&Value::Text(other.as_str().into())));
        assert!(!d.same_as(&Value::Digest(Box::new(Digested::of_text(&other)))));
        // Bytes holding the text's UTF-8 form are the same value (see the test below); others
        // are not.
        assert!(!d.same_as(&Value::Bytes(other.clone().into_bytes())));
        assert!(!d.same_as(&Value::Null));
        // Evidence of a digest and of the whole value it stands for are the same.
        assert_eq!(
            d.to_evidence_json(),
            Value::Text(whole.into()).to_evidence_json()
        );
        let b = vec![1u8; 50_000];
        let db = Value::Digest(Box::new(Digested::of_bytes(&b)));
        assert!(db.same_as(&Value::Bytes(b.clone())));
        assert_eq!(db.to_evidence_json(), Value::Bytes(b).to_evidence_json());
    }

    #[test]
    fn a_value_longer_than_the_cap_is_kept_as_its_start_length_and_digest() {
        use sha2::{Digest, Sha256};
        let short = Value::Text("é".repeat(EVIDENCE_VALUE_CAP / 2).into());
        assert_eq!(short.to_evidence_json(), short.to_canonical_json());
        // A multi-byte character straddling the cap is not cut in half.
        let long = Value::Text(compact_str::format_compact!("a{}", "é".repeat(5_000_000)));
        let e = long.to_evidence_json();
        assert!(is_capped(&e), "{e}");
        let prefix = e[CAPPED]["prefix"].as_str().unwrap();
        assert_eq!(prefix.len(), EVIDENCE_VALUE_CAP - 1);
        assert_eq!(e[CAPPED]["bytes"], 10_000_001);
        let Value::Text(whole) = &long else {
            unreachable!()
        };
        assert_eq!(
            e[CAPPED]["sha256"],
            hex::encode(Sha256::digest(whole.as_bytes()))
        );
        // Two long values that differ only past the cap still differ as evidence.
        let other = Value::Text(compact_str::format_compact!("a{}b", "é".repeat(4_999_999)));
        assert_ne!(other.to_evidence_json(), e);
        assert!(!long.same_as(&other));
        let bytes = Value::Bytes(vec![7; 100_000]).to_evidence_json();
        assert_eq!(bytes[CAPPED]["bytes"], 100_000);
        assert_eq!(
            bytes[CAPPED]["prefix"].as_str().unwrap().len(),
            EVIDENCE_VALUE_CAP
        );
        let json = Value::Json(Box::new(serde_json::json!({"items": vec!["x"; 10_000]})))
            .to_evidence_json();
        assert!(is_capped(&json));
        assert!(!is_capped(&serde_json::json!({"$capped": 1, "other": 2})));
    }

    fn dec(s: &str) -> Value {
        Value::Decimal(Decimal::from_str(s).unwrap())
    }

    #[test]
    fn numbers_compare_by_value_whatever_their_width_or_scale() {
        assert!(Value::Int(5).same_as(&dec("5.00")));
        assert!(dec("10.50").same_as(&dec("10.5")));
        assert!(!dec("10.50").same_as(&dec("10.51")));
        assert!(Value::Float(2.5).same_as(&dec("2.5")));
        assert_eq!(Value::Int(9).key_cmp(&dec("10")), Ordering::Less);
    }

    #[test]
    fn a_float_equals_only_the_decimal_it_prints_as_and_orders_among_them() {
        assert!(Value::Float(0.1).same_as(&dec("0.1")));
        assert!(Value::Float(0.1).same_as(&dec("0.10")));
        assert!(!Value::Float(0.1).same_as(&dec("0.100000000000000000001")));
        assert!(!dec("0.30000000000000001").same_as(&Value::Float(0.1 + 0.2)));
        assert!(dec("0.30000000000000004").same_as(&Value::Float(0.1 + 0.2)));
        // 2^53 + 1 is no double: as doubles, the two were equal.
        assert!(!Value::Int(9_007_199_254_740_993).same_as(&Value::Float(9_007_199_254_740_992.0)));
        assert!(Value::Int(9_007_199_254_740_992).same_as(&Value::Float(9_007_199_254_740_992.0)));
        assert!(Value::Int(-3).same_as(&Value::Float(-3.0)));
        assert!(Value::Int(0).same_as(&Value::Float(-0.0)));
        assert!(dec("1e20").same_as(&Value::Float(1e20)));
        // A whole double is its exact value, past 2^53 too (2^55 prints as ...970).
        assert!(
            Value::Int(36_028_797_018_963_968).same_as(&Value::Float(36_028_797_018_963_968.0))
        );
        assert!(
            !Value::Int(36_028_797_018_963_970).same_as(&Value::Float(36_028_797_018_963_968.0))
        );
        assert_eq!(
            Value::Float(36_028_797_018_963_968.0).key_cmp(&Value::Int(36_028_797_018_963_969)),
            Ordering::Less
        );
        assert!(!dec("1e23").same_as(&Value::Float(1e23)));
        assert!(dec("99999999999999991611392").same_as(&Value::Float(1e23)));
        // A whole float's key JSON is the integer's (or the decimal's) it equals.
        for (float, exact) in [
            (5.0, Value::Int(5)),
            (1e16, Value::Int(10_000_000_000_000_000)),
            (1e23, dec("99999999999999991611392")),
        ] {
            assert_eq!(
                Value::Float(float).to_canonical_json(),
                exact.to_canonical_json()
            );
        }
        assert_eq!(
            Value::Float(2.5).to_canonical_json(),
            serde_json::json!(2.5)
        );
        assert_eq!(
            Value::Int(9_007_199_254_740_993).key_cmp(&Value::Float(9_007_199_254_740_992.0)),
            Ordering::Greater
        );
        assert_eq!(dec("0.1").key_cmp(&Value::Float(0.2)), Ordering::Less);
        assert_eq!(
            Value::Float(0.1).key_cmp(&dec("0.100000000000000000001")),
            Ordering::Less
        );
        // Past a decimal's range or scale: never equal, ordered as doubles.
        assert_eq!(
            Value::Float(1e30).key_cmp(&dec("79228162514264337593543950335")),
            Ordering::Greater
        );
        assert_eq!(
            Value::Float(-1e30).key_cmp(&Value::Int(i64::MIN)),
            Ordering::Less
        );
        assert!(!Value::Float(1.2345678901234567e-20).same_as(&dec("0")));
        assert_eq!(
            Value::Float(1.2345678901234567e-20).key_cmp(&dec("0")),
            Ordering::Greater
        );
        assert_eq!(
            Value::Float(f64::INFINITY).key_cmp(&Value::Int(i64::MAX)),
            Ordering::Greater
        );
    }

    #[test]
    fn a_json_number_a_double_does_not_keep_is_found_and_numbers_compare_by_value() {
        for exact in [
            r#"{"a": 0.1, "b": [1, -2.50, 1e300, 12345678901234567890, -9223372036854775808]}"#,
            r#"{"s": "0.1000000000000000000001 \" 123456789012345678901234"}"#,
            "-0.0",
            "0.30000000000000004",
            "1.7976931348623157e308",
            "5e-324",
            "36028797018963968.0",
        ] {
            assert_eq!(inexact_json_number(exact), None, "{exact}");
        }
        for (text, number) in [
            (r#"{"a": 0.1000000000000000001}"#, "0.1000000000000000001"),
            ("[1, 18446744073709551616]", "18446744073709551616"),
            ("[-9223372036854775809]", "-9223372036854775809"),
            (
                r#"{"x": "}", "y": 9007199254740993.0}"#,
                "9007199254740993.0",
            ),
            ("0.30000000000000001", "0.30000000000000001"),
            ("[36028797018963970.0]", "36028797018963970.0"),
        ] {
            assert_eq!(inexact_json_number(text), Some(number), "{text}");
        }
        // An exponent past 64 bits is no panic: refused.
        assert_eq!(
            inexact_json_number("0.5e-9223372036854775808"),
            Some("0.5e-9223372036854775808")
        );
        // A whole double past 2^53 printed by its shortest digits is another number.
        assert_eq!(
            inexact_json_number("[3.602879701896397e16]"),
            Some("3.602879701896397e16")
        );
        assert_eq!(
            repeated_json_member(r#"[{"a": {"b": 1, "c": 2}}, {"a": 1, "b": [{"x": 1, "x": 2}]}]"#),
            Some("x".to_owned())
        );
        assert_eq!(repeated_json_member(r#"{"a": 1, "b": {"a": 2}}"#), None);
        let json = |t: &str| Value::Json(Box::new(serde_json::from_str(t).unwrap()));
        assert!(!json(r#"{"a": 2}"#).same_as(&Value::Text(r#"{"a": 1, "a": 2}"#.into())));
        assert!(json(r#"{"a": 1, "b": [2.5]}"#).same_as(&json(r#"{"b": [2.50], "a": 1.0}"#)));
        assert!(!json(r#"{"a": 1}"#).same_as(&json(r#"{"a": 1.5}"#)));
        assert!(!json("[1, 2]").same_as(&json("[2, 1]")));
        assert!(json(r#"{"a": 1.0}"#).same_as(&Value::Text(r#"{"a":1}"#.into())));
        // Text holding a number no double keeps equals no JSON read.
        assert!(
            !json(r#"{"a": 0.1}"#).same_as(&Value::Text(r#"{"a":0.1000000000000000001}"#.into()))
        );
    }

    #[test]
    fn text_compares_byte_wise_without_padding_or_case_folding() {
        assert!(!Value::Text("a".into()).same_as(&Value::Text("a ".into())));
        assert!(!Value::Text("A".into()).same_as(&Value::Text("a".into())));
        assert_eq!(
            Value::Text("Z".into()).key_cmp(&Value::Text("a".into())),
            Ordering::Less
        );
        assert_eq!(
            Value::Text("a".into()).key_cmp(&Value::Text("a\t".into())),
            Ordering::Less
        );
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_value_is_four_words_so_rows_stay_small() {
        // Every row holds one per column: a JSON value inline made each 72 bytes, and a text
        // of a few bytes a heap allocation of its own.
        assert_eq!(std::mem::size_of::<Value>(), 32);
        let Value::Text(currency) = Value::Text("EUR".into()) else {
            unreachable!()
        };
        assert!(!currency.is_heap_allocated());
    }

    #[test]
    fn null_equals_null_but_nothing_else() {
        assert!(Value::Null.same_as(&Value::Null));
        assert!(!Value::Null.same_as(&Value::Int(0)));
        assert!(!Value::Text(CompactString::default()).same_as(&Value::Null));
        assert_eq!(Value::Null.key_cmp(&Value::Int(i64::MIN)), Ordering::Less);
    }

    #[test]
    fn booleans_match_mysql_tinyint_flags() {
        assert!(Value::Bool(true).same_as(&Value::Int(1)));
        assert!(Value::Int(0).same_as(&Value::Bool(false)));
        assert!(!Value::Bool(true).same_as(&Value::Int(2)));
    }

    #[test]
    fn negative_zero_equals_zero_and_nan_sorts_last() {
        assert_eq!(
            Value::Float(-0.0).key_cmp(&Value::Float(0.0)),
            Ordering::Equal
        );
        assert_eq!(
            Value::Float(f64::NAN).key_cmp(&Value::Float(f64::INFINITY)),
            Ordering::Greater
        );
        assert_eq!(
            Value::Int(1).key_cmp(&Value::Float(f64::NAN)),
            Ordering::Less
        );
    }

    #[test]
    fn different_classes_are_never_equal() {
        assert!(!Value::Text("5".into()).same_as(&Value::Int(5)));
        assert!(!Value::Bytes(vec![5]).same_as(&Value::Int(5)));
    }

    /// A MySQL/MariaDB text column in a binary collation (`utf8mb4_bin`) reads as bytes.
    #[test]
    fn text_equals_the_bytes_of_its_utf8_form_whole_or_as_a_digest() {
        let text = Value::Text("Zürich".into());
        let bytes = Value::Bytes("Zürich".as_bytes().to_vec());
        assert!(text.same_as(&bytes) && bytes.same_as(&text));
        assert!(!text.same_as(&Value::Bytes(b"Zurich".to_vec())));
        assert!(!Value::Text("a".into()).same_as(&Value::Bytes(b"a ".to_vec())));
        let long = "ü".repeat(40_000);
        let text_digest = Value::Digest(Box::new(Digested::of_text(&long)));
        let bytes_digest = Value::Digest(Box::new(Digested::of_bytes(long.as_bytes())));
        assert!(text_digest.same_as(&Value::Bytes(long.as_bytes().to_vec())));
        assert!(bytes_digest.same_as(&Value::Text(long.as_str().into())));
        assert!(text_digest.same_as(&bytes_digest));
        assert!(!text_digest.same_as(&Value::Bytes(long.as_bytes()[2..].to_vec())));
        assert!(
            !text_digest.same_as(&Value::Digest(Box::new(Digested::of_bytes(
                &long.as_bytes()[2..]
            ))))
        );
        // JSON held as bytes (MariaDB's JSON type) compares structurally, as text does.
        let json = Value::Json(Box::new(serde_json::json!({"a": [1, 2]})));
        assert!(json.same_as(&Value::Bytes(br#"{ "a": [1,2] }"#.to_vec())));
        assert!(!json.same_as(&Value::Bytes(br#"{"a": [2, 1]}"#.to_vec())));
        assert!(!json.same_as(&Value::Bytes(vec![0xff])));
        // Keys never mix them (a key type mismatch is refused), and sort apart.
        assert_ne!(text.key_cmp(&bytes), Ordering::Equal);
    }

    #[test]
    fn canonical_json_is_the_same_for_the_same_number() {
        assert_eq!(
            dec("5.00").to_canonical_json(),
            Value::Int(5).to_canonical_json()
        );
        assert_eq!(dec("5.10").to_canonical_json(), serde_json::json!("5.1"));
    }
}
