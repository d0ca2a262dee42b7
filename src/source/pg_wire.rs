//! PostgreSQL's binary wire forms, read straight from the bytes: one value of each type trueup
//! reads (the same bytes arrive in a prepared statement's binary result and in a binary COPY),
//! and the rows of `COPY ... TO STDOUT (FORMAT binary)`.
//!
//! The driver's decoders cannot be used on bytes outside its own rows (its value type has no
//! public constructor), and its date and time decoders panic on values the server can send
//! (`infinity`); these never panic and say what a value they refuse was.

use std::ops::Range;

use crate::domain::{Digested, Value, ValueClass};

use super::decode::{Kind, pg_time};
use super::sql::DecodeResult;

fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], sqlx::error::BoxDynError> {
    bytes
        .try_into()
        .map_err(|_| format!("a binary {what} of {} bytes, expected {N}", bytes.len()).into())
}

fn utf8(bytes: &[u8]) -> Result<&str, sqlx::error::BoxDynError> {
    std::str::from_utf8(bytes).map_err(|e| format!("text that is not UTF-8 ({e})").into())
}

/// One non-NULL value of a column of `kind` in its binary form.
pub(super) fn value(kind: Kind, bytes: &[u8]) -> DecodeResult {
    Ok(match kind {
        Kind::Bool => Value::Bool(fixed::<1>(bytes, "boolean")?[0] != 0),
        Kind::I16 => Value::Int(i16::from_be_bytes(fixed(bytes, "int2")?).into()),
        Kind::I32 => Value::Int(i32::from_be_bytes(fixed(bytes, "int4")?).into()),
        Kind::I64 => Value::Int(i64::from_be_bytes(fixed(bytes, "int8")?)),
        Kind::U32 => Value::Int(u32::from_be_bytes(fixed(bytes, "oid")?).into()),
        Kind::Decimal => Value::Decimal(numeric(bytes)?),
        Kind::F32 => Value::Float(f32::from_be_bytes(fixed(bytes, "float4")?).into()),
        Kind::F64 => Value::Float(f64::from_be_bytes(fixed(bytes, "float8")?)),
        Kind::Text => Value::Text(utf8(bytes)?.into()),
        Kind::PaddedText => Value::Text(utf8(bytes)?.trim_end_matches(' ').into()),
        Kind::Uuid => Value::Text(
            sqlx::types::Uuid::from_bytes(fixed(bytes, "uuid")?)
                .to_string()
                .into(),
        ),
        Kind::Date => Value::Date(pg_time::date(bytes)?),
        Kind::Time => Value::Time(pg_time::time(bytes)?),
        Kind::Naive | Kind::Timestamp => Value::Timestamp(pg_time::timestamp(bytes)?),
        // `jsonb` sends a version byte (1) before its text, `json` the text alone; no JSON
        // text starts with byte 1, so the first byte tells them apart.
        Kind::Json => {
            let text = match bytes.split_first() {
                Some((1, rest)) => rest,
                _ => bytes,
            };
            Value::Json(Box::new(super::decode::exact_json(text, "TEXT")?))
        }
        Kind::Bytes => Value::Bytes(bytes.to_vec()),
        Kind::U64 | Kind::Dynamic(_) => {
            return Err("unexpected column kind for PostgreSQL".into());
        }
    })
}

/// A NUMERIC, or why it is no decimal trueup can compare.
fn numeric(bytes: &[u8]) -> Result<rust_decimal::Decimal, sqlx::error::BoxDynError> {
    if let Some(d) = numeric_to_decimal(bytes) {
        return Ok(d);
    }
    let sign = bytes.get(4..6).map(|s| u16::from_be_bytes([s[0], s[1]]));
    Err(match sign {
        Some(0xC000) => "NUMERIC `NaN` is not a number trueup can compare".into(),
        Some(0xD000) => "NUMERIC `Infinity` is not a number trueup can compare".into(),
        Some(0xF000) => "NUMERIC `-Infinity` is not a number trueup can compare".into(),
        // A display scale past 28 (`numeric(40,30)`) or a scaled mantissa past 96 bits
        // (`numeric(36,18)` above ~8e10) often holds a value a decimal does: its digits without
        // the scale's trailing zeros. Only a value with more digits than a decimal holds is refused.
        Some(0x0000 | 0x4000) => match significant_digits(bytes) {
            Some(text) => return super::decode::exact_decimal("NUMERIC", &text),
            None => format!(
                "a binary NUMERIC of {} bytes that is malformed",
                bytes.len()
            )
            .into(),
        },
        _ => format!(
            "a binary NUMERIC of {} bytes that is malformed",
            bytes.len()
        )
        .into(),
    })
}

/// A finite binary NUMERIC as decimal text with no leading or trailing zeros (`-12.5`, `0.001`,
/// `100`), whatever its display scale; `None` if the bytes are not one.
fn significant_digits(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| Some(i16::from_be_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]));
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = i32::from(word(2)?);
    let negative = u16::from_be_bytes([*bytes.get(4)?, *bytes.get(5)?]) == 0x4000;
    if bytes.len() != 8 + 2 * ndigits {
        return None;
    }
    // Base-10000 groups from `weight` down: group g stands for 10000^(weight - g).
    let groups: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i).and_then(|d| u16::try_from(d).ok().filter(|d| *d < 10_000)))
        .collect::<Option<_>>()?;
    // Group g stands for 10000^(weight - g); groups past the stored ones, or before the first
    // (a fraction's leading zeros), are zero.
    let group = |g: i32| -> u16 {
        usize::try_from(g)
            .ok()
            .and_then(|g| groups.get(g))
            .copied()
            .unwrap_or(0)
    };
    let last = i32::try_from(ndigits).ok()? - 1;
    let int: String = (0..=weight).map(|g| format!("{:04}", group(g))).collect();
    let frac: String = (weight + 1..=last)
        .map(|g| format!("{:04}", group(g)))
        .collect();
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let mut text = String::new();
    if negative && !(int.is_empty() && frac.is_empty()) {
        text.push('-');
    }
    text.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        text.push('.');
        text.push_str(frac);
    }
    Some(text)
}

/// Powers of ten an `i128` holds (10^0 to 10^38).
const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < table.len() {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// PostgreSQL's binary NUMERIC (base-10000 digits, weight, sign, display scale) straight to a
/// `Decimal`: the digit groups as one integer (Horner's rule), then one multiplication or
/// division by a power of ten from a table to the display scale. The general conversion
/// divided per digit and showed up as an eighth of the reconcile's CPU time; a power computed
/// per digit group, as a tenth. `None` for what it does not cover (NaN, infinities, more than
/// 28 digits of scale or 96 bits of mantissa, malformed digit groups).
fn numeric_to_decimal(bytes: &[u8]) -> Option<rust_decimal::Decimal> {
    let word = |i: usize| -> Option<i32> {
        Some(i32::from(i16::from_be_bytes([
            *bytes.get(i)?,
            *bytes.get(i + 1)?,
        ])))
    };
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = word(2)?;
    let sign = u16::from_be_bytes([*bytes.get(4)?, *bytes.get(5)?]);
    let scale = u16::from_be_bytes([*bytes.get(6)?, *bytes.get(7)?]);
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        _ => return None,
    };
    if scale > 28 || bytes.len() != 8 + 2 * ndigits {
        return None;
    }
    let mut groups: i128 = 0;
    for i in 0..ndigits {
        let digit = word(8 + 2 * i)?;
        if !(0..10_000).contains(&digit) {
            return None;
        }
        groups = groups.checked_mul(10_000)?.checked_add(i128::from(digit))?;
    }
    // The last group stands for 10000^(weight - ndigits + 1); scaled by 10^scale.
    let last = i32::try_from(ndigits).ok()? - 1;
    let exp = 4 * (weight - last) + i32::from(scale);
    let mut mantissa = if exp >= 0 {
        groups.checked_mul(*POW10.get(usize::try_from(exp).ok()?)?)?
    } else {
        // Past the display scale only zeros remain in a digit group.
        groups / *POW10.get(usize::try_from(-exp).ok()?)?
    };
    if negative {
        mantissa = -mantissa;
    }
    rust_decimal::Decimal::try_from_i128_with_scale(mantissa, u32::from(scale)).ok()
}

/// A long value as the database described it (see `Dialect::digest_select`): its length
/// (int4), SHA-256 (hex text) and start (text, or bytea for bytes), each non-NULL.
pub(super) fn digested(kind: Kind, length: &[u8], sha256: &[u8], start: &[u8]) -> DecodeResult {
    let bytes = i32::from_be_bytes(fixed(length, "int4")?);
    let sha256 = utf8(sha256)?.to_owned();
    let (class, prefix) = if kind == Kind::Bytes {
        (ValueClass::Bytes, crate::domain::value_bytes_prefix(start))
    } else {
        (
            ValueClass::Text,
            crate::domain::value_text_prefix(utf8(start)?).to_owned(),
        )
    };
    Ok(Value::Digest(Box::new(Digested {
        class,
        bytes: u64::try_from(bytes).map_err(|_| format!("a negative length {bytes}"))?,
        sha256,
        prefix,
    })))
}

/// The rows of a binary COPY, one CopyData message at a time. The server sends one message
/// per row, the file header in front of the first and the trailer alone
/// (<https://www.postgresql.org/docs/current/sql-copy.html>, "Binary Format").
pub(super) struct CopyRows {
    columns: usize,
    header_read: bool,
    ended: bool,
}

/// Why the bytes of a binary COPY are not one: the stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the binary COPY stream is malformed: {0}")]
pub(super) struct MalformedCopy(String);

/// The 11-byte signature that opens a binary COPY.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl CopyRows {
    pub(super) fn new(columns: usize) -> Self {
        Self {
            columns,
            header_read: false,
            ended: false,
        }
    }

    /// Whether the trailer has been read: the COPY sent every row.
    pub(super) fn ended(&self) -> bool {
        self.ended
    }

    /// Reads one message: `Ok(true)` with `fields` set to where each field's bytes are in
    /// `message` (`None` for NULL), `Ok(false)` for the trailer.
    pub(super) fn row(
        &mut self,
        message: &[u8],
        fields: &mut Vec<Option<Range<usize>>>,
    ) -> Result<bool, MalformedCopy> {
        self.read_row(message, fields).map_err(MalformedCopy)
    }

    fn read_row(
        &mut self,
        message: &[u8],
        fields: &mut Vec<Option<Range<usize>>>,
    ) -> Result<bool, String> {
        if self.ended {
            return Err("data after the end of the COPY".into());
        }
        let mut at = 0;
        if !self.header_read {
            at = self.header(message)?;
            self.header_read = true;
        }
        let count = i16::from_be_bytes(take::<2>(message, &mut at)?);
        if count == -1 {
            self.ended = true;
            return match at == message.len() {
                true => Ok(false),
                false => Err("data after the COPY trailer".into()),
            };
        }
        if usize::try_from(count).ok() != Some(self.columns) {
            return Err(format!(
                "a row of {count} fields where the query has {} columns",
                self.columns
            ));
        }
        fields.clear();
        for _ in 0..self.columns {
            let len = i32::from_be_bytes(take::<4>(message, &mut at)?);
            if len == -1 {
                fields.push(None);
                continue;
            }
            let len = usize::try_from(len).map_err(|_| format!("a field length of {len}"))?;
            let end = at
                .checked_add(len)
                .filter(|end| *end <= message.len())
                .ok_or("a field longer than its message")?;
            fields.push(Some(at..end));
            at = end;
        }
        match at == message.len() {
            true => Ok(true),
            false => Err("a message holding more than one row".into()),
        }
    }

    /// Checks the file header; returns where the first row starts.
    fn header(&self, message: &[u8]) -> Result<usize, String> {
        if !message.starts_with(SIGNATURE) {
            return Err("the COPY did not start with the binary signature".into());
        }
        let mut at = SIGNATURE.len();
        let flags = u32::from_be_bytes(take::<4>(message, &mut at)?);
        // Bits 16-31 are critical: one set that this reader does not know means it cannot
        // read the rest (bit 16: OIDs, which no query sends).
        if flags & 0xFFFF_0000 != 0 {
            return Err(format!(
                "COPY header flags {flags:#x} this reader does not know"
            ));
        }
        let extension = u32::from_be_bytes(take::<4>(message, &mut at)?);
        at = usize::try_from(extension)
            .ok()
            .and_then(|n| at.checked_add(n))
            .filter(|end| *end <= message.len())
            .ok_or("a COPY header extension longer than its message")?;
        Ok(at)
    }
}

fn take<const N: usize>(message: &[u8], at: &mut usize) -> Result<[u8; N], String> {
    let bytes = message
        .get(*at..*at + N)
        .ok_or("a COPY message cut short")?
        .try_into()
        .map_err(|_| "a COPY message cut short".to_owned())?;
    *at += N;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend(0u32.to_be_bytes());
        h.extend(0u32.to_be_bytes());
        h
    }

    fn row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut r = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                Some(b) => {
                    r.extend((b.len() as i32).to_be_bytes());
                    r.extend(*b);
                }
                None => r.extend((-1i32).to_be_bytes()),
            }
        }
        r
    }

    const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

    #[test]
    fn a_binary_copy_reads_as_its_rows_then_its_trailer() {
        let mut rows = CopyRows::new(2);
        let mut fields = Vec::new();
        let first = [header(), row(&[Some(&7i64.to_be_bytes()), Some(b"EUR")])].concat();
        assert_eq!(rows.row(&first, &mut fields), Ok(true));
        let read: Vec<_> = fields
            .iter()
            .map(|f| f.clone().map(|r| &first[r]))
            .collect();
        assert_eq!(read, [Some(&7i64.to_be_bytes()[..]), Some(&b"EUR"[..])]);
        let second = row(&[Some(&8i64.to_be_bytes()), None]);
        assert_eq!(rows.row(&second, &mut fields), Ok(true));
        assert_eq!(fields[1], None);
        assert!(!rows.ended());
        assert_eq!(rows.row(&TRAILER, &mut fields), Ok(false));
        assert!(rows.ended(), "the trailer is the proof that every row came");
    }

    #[test]
    fn an_empty_copy_is_its_header_and_trailer_in_one_message() {
        let mut rows = CopyRows::new(3);
        let only = [header(), TRAILER.to_vec()].concat();
        assert_eq!(rows.row(&only, &mut Vec::new()), Ok(false));
        assert!(rows.ended());
    }

    #[test]
    fn a_malformed_copy_is_an_error_never_a_short_result() {
        let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
            ("no signature", vec![row(&[None])], "binary signature"),
            (
                "a critical flag",
                vec![{
                    let mut h = SIGNATURE.to_vec();
                    h.extend(0x0001_0000u32.to_be_bytes());
                    h.extend(0u32.to_be_bytes());
                    h
                }],
                "flags 0x10000",
            ),
            (
                "too few fields",
                vec![[header(), row(&[None, None])].concat()],
                "a row of 2 fields where the query has 1 columns",
            ),
            (
                "a field past its message",
                vec![
                    [
                        header(),
                        1i16.to_be_bytes().to_vec(),
                        9i32.to_be_bytes().to_vec(),
                        b"abc".to_vec(),
                    ]
                    .concat(),
                ],
                "longer than its message",
            ),
            (
                "a cut length",
                vec![[header(), 1i16.to_be_bytes().to_vec(), vec![0, 0]].concat()],
                "cut short",
            ),
            (
                "two rows in a message",
                vec![[header(), row(&[None]), row(&[None])].concat()],
                "more than one row",
            ),
            (
                "data after the trailer",
                vec![
                    [header(), row(&[None])].concat(),
                    TRAILER.to_vec(),
                    row(&[None]),
                ],
                "after the end",
            ),
        ];
        for (what, messages, says) in cases {
            let mut rows = CopyRows::new(1);
            let mut fields = Vec::new();
            let err = messages
                .iter()
                .map(|m| rows.row(m, &mut fields))
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("{what}: read without an error"));
            assert!(err.to_string().contains(says), "{what}: {err}");
        }
    }

    /// The fast conversion agrees with the text one (each digit group written out) on every
    /// NUMERIC it covers, and covers the everyday ones: random digit groups, weights, signs
    /// and display scales.
    #[test]
    fn the_fast_numeric_conversion_agrees_with_the_digit_by_digit_one() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let mut covered = 0;
        for _ in 0..20_000 {
            let ndigits: i16 = rng.random_range(0..=8);
            let weight: i16 = rng.random_range(-6..=6);
            let negative = rng.random_bool(0.5);
            let scale: u16 = rng.random_range(0..=32);
            let mut bytes = Vec::new();
            bytes.extend(ndigits.to_be_bytes());
            bytes.extend(weight.to_be_bytes());
            bytes.extend(if negative { 0x4000u16 } else { 0 }.to_be_bytes());
            bytes.extend(scale.to_be_bytes());
            for _ in 0..ndigits {
                bytes.extend(rng.random_range(0i16..10_000).to_be_bytes());
            }
            let Some(fast) = numeric_to_decimal(&bytes) else {
                continue;
            };
            let text = significant_digits(&bytes).expect("well-formed");
            // The display scale cuts what lies past it, as PostgreSQL's output does.
            let cut = match text.split_once('.') {
                Some((int, frac)) => {
                    let frac = &frac[..frac.len().min(usize::from(scale))];
                    if frac.is_empty() {
                        int.to_owned()
                    } else {
                        format!("{int}.{frac}")
                    }
                }
                None => text.clone(),
            };
            let want = rust_decimal::Decimal::from_str_exact(&cut)
                .expect("a decimal")
                .trunc_with_scale(u32::from(scale));
            assert_eq!(fast, want, "{bytes:?} ({text}, scale {scale})");
            assert_eq!(fast.scale(), u32::from(scale), "{bytes:?}");
            covered += 1;
        }
        assert!(covered > 10_000, "only {covered} of 20000 covered");
        // A digit group past 9999 is malformed: not a number to convert.
        assert_eq!(
            numeric_to_decimal(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]),
            None
        );
    }

    #[test]
    fn binary_values_decode_by_kind_and_refuse_what_they_cannot_hold() {
        assert_eq!(value(Kind::Bool, &[1]).unwrap(), Value::Bool(true));
        assert_eq!(
            value(Kind::I16, &(-3i16).to_be_bytes()).unwrap(),
            Value::Int(-3)
        );
        assert_eq!(
            value(Kind::U32, &u32::MAX.to_be_bytes()).unwrap(),
            Value::Int(u32::MAX.into())
        );
        assert_eq!(
            value(Kind::F64, &0.5f64.to_be_bytes()).unwrap(),
            Value::Float(0.5)
        );
        assert_eq!(
            value(Kind::PaddedText, b"ab  ").unwrap(),
            Value::Text("ab".into())
        );
        let uuid = [0x12u8; 16];
        assert_eq!(
            value(Kind::Uuid, &uuid).unwrap(),
            Value::Text("12121212-1212-1212-1212-121212121212".into())
        );
        // json sends its text; jsonb a version byte first.
        let json = serde_json::json!({"a": [1, 2]});
        assert_eq!(
            value(Kind::Json, br#"{"a": [1, 2]}"#).unwrap(),
            Value::Json(Box::new(json.clone()))
        );
        assert_eq!(
            value(Kind::Json, b"\x01{\"a\": [1, 2]}").unwrap(),
            Value::Json(Box::new(json))
        );
        // NUMERIC 12.50: 2 digits (12, 5000), weight 0, positive, scale 2.
        let n = [0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88];
        assert_eq!(
            value(Kind::Decimal, &n).unwrap(),
            Value::Decimal(rust_decimal::Decimal::new(1250, 2))
        );
        let nan = [0, 0, 0, 0, 0xC0, 0, 0, 0];
        assert!(
            value(Kind::Decimal, &nan)
                .unwrap_err()
                .to_string()
                .contains("`NaN`")
        );
        // Past 28 places of display scale, or 96 bits once scaled: the value without the
        // scale's trailing zeros, when it has that few significant digits.
        // 1.5 as numeric(40,30): groups (1, 5000), weight 0, scale 30.
        let wide_scale = [0, 2, 0, 0, 0, 0, 0, 30, 0, 1, 0x13, 0x88];
        assert_eq!(
            value(Kind::Decimal, &wide_scale).unwrap(),
            Value::Decimal(rust_decimal::Decimal::new(15, 1))
        );
        // 100000000000 (1e11) as numeric(36,18): one group 1000, weight 2, scale 18.
        let big = [0, 1, 0, 2, 0, 0, 0, 18, 0x03, 0xE8];
        assert_eq!(
            value(Kind::Decimal, &big).unwrap(),
            Value::Decimal(rust_decimal::Decimal::new(100_000_000_000, 0))
        );
        // -0.00000123 with scale 40: groups (0, 123) at weight -2 → 0.0000 0123.
        let small = [0, 1, 0xFF, 0xFE, 0x40, 0, 0, 40, 0, 123];
        assert_eq!(
            value(Kind::Decimal, &small).unwrap(),
            Value::Decimal(rust_decimal::Decimal::new(-123, 8))
        );
        // 1e40: more significant digits than a decimal holds.
        let huge = [0, 1, 0, 10, 0, 0, 0, 0, 0, 1];
        assert!(
            value(Kind::Decimal, &huge)
                .unwrap_err()
                .to_string()
                .contains("more digits than"),
        );
        let infinity = [0, 0, 0, 0, 0xD0, 0, 0, 0];
        assert!(
            value(Kind::Decimal, &infinity)
                .unwrap_err()
                .to_string()
                .contains("`Infinity`")
        );
        for (kind, bytes) in [
            (Kind::I32, &[0u8, 1][..]),
            (Kind::Bool, &[][..]),
            (Kind::Text, &[0xff, 0xfe][..]),
            (Kind::Json, &b"{"[..]),
        ] {
            assert!(value(kind, bytes).is_err(), "{kind:?} {bytes:?}");
        }
    }

    #[test]
    fn a_digested_value_reads_from_its_three_parts() {
        let sha = "ab".repeat(32);
        let got = digested(
            Kind::Text,
            &70_000i32.to_be_bytes(),
            sha.as_bytes(),
            b"start",
        )
        .unwrap();
        let Value::Digest(d) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            (d.class, d.bytes, d.sha256.as_str()),
            (ValueClass::Text, 70_000, sha.as_str())
        );
    }
}
