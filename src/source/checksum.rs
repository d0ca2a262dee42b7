//! Segment checksums computed where the rows are: how a reconcile learns which key ranges
//! differ without reading their rows.
//!
//! A row's hash is its key's hash seeded by the XOR of one seeded 64-bit hash per compared
//! column (NUMERIC columns chained, see [`pg_numeric_hash`]), each column hashed under a
//! [`Form`] both sides share — or, across engines, the MD5 of the row's canonical text; a
//! segment's summary is its row count, the sum of
//! its row hashes (exact: PostgreSQL sums `bigint` into `numeric`) and how many of its rows
//! repeat the key of the row before them. Equal count and sum mean equal rows but with a
//! chance of about 2^-64 per differing segment.
//!
//! **The rule a form keeps:** two values hash alike only if trueup compares them equal
//! (`domain::value`). The converse need not hold: a form may tell apart values the comparison
//! calls equal — their segment is then streamed and the merge decides, which costs time,
//! never a violation. A pair of column types with no such form has no checksum: the
//! invariant streams, and the run says why.

use super::decode::Kind;

/// How rows are hashed; both sides of a reconcile use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// PostgreSQL's seeded hash functions, one per compared column, XORed into the seed of
    /// the key's: fast, and only between PostgreSQL servers whose probe of fixed values
    /// agrees.
    Typed,
    /// The MD5 of a canonical text of the row, which PostgreSQL and MySQL/MariaDB write
    /// alike: every value is written as text first (slower), across engines.
    Canonical,
}

/// How one column's values enter a row's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Integers of any width, and booleans as 0/1 (they equal MySQL `TINYINT(1)`).
    Integer,
    /// Numbers by value: `10.50` and `10.5` alike; integers compared with a NUMERIC column.
    Numeric,
    /// Text by its bytes (PostgreSQL `CHAR(n)` without its padding, as trueup reads it).
    Text,
    /// Timestamps as instants (without time zone: read as UTC).
    Instant,
    Date,
    TimeOfDay,
    Bytes,
}

impl Form {
    /// The form under which a left column of `left` and a right one of `right` hash alike
    /// only when trueup compares their values equal; `Err`: why there is none.
    pub(crate) fn shared(left: Kind, right: Kind) -> Result<Form, String> {
        use Kind::*;
        let integer = |k: Kind| matches!(k, Bool | I16 | I32 | I64 | U32 | U64);
        let number = |k: Kind| matches!(k, I16 | I32 | I64 | U32 | U64 | Decimal);
        let text = |k: Kind| matches!(k, Text | PaddedText | Uuid);
        let instant = |k: Kind| matches!(k, Naive | Timestamp);
        // A SQLite value's type is its own: that side is hashed per value
        // ([`canonical_value`]), in the form the other side's type gives.
        let (left, right) = match (left, right) {
            (Dynamic(_), Dynamic(_)) => {
                return Err("both sides' types are only known per value (SQLite)".into());
            }
            (Dynamic(_), k) | (k, Dynamic(_)) => (k, k),
            pair => pair,
        };
        let why = |k: Kind| match k {
            F32 | F64 => Some("floating-point values have no exact form both sides hash alike"),
            Json => Some("JSON compares structurally, which no hash of its text follows"),
            _ => None,
        };
        if let Some(reason) = why(left).or(why(right)) {
            return Err(reason.to_owned());
        }
        Ok(match (left, right) {
            (l, r) if integer(l) && integer(r) => Form::Integer,
            (l, r) if number(l) && number(r) => Form::Numeric,
            (l, r) if text(l) && text(r) => Form::Text,
            (l, r) if instant(l) && instant(r) => Form::Instant,
            (Date, Date) => Form::Date,
            (Time, Time) => Form::TimeOfDay,
            // Text equals the bytes of its UTF-8 form (`Value::same_as`): a MySQL/MariaDB text
            // column in a binary collation reads as bytes.
            (l, r) if (text(l) || l == Bytes) && (text(r) || r == Bytes) => Form::Bytes,
            _ => {
                return Err(format!(
                    "it is {} on the left and {} on the right",
                    kind_name(left),
                    kind_name(right)
                ));
            }
        })
    }
}

fn kind_name(kind: Kind) -> &'static str {
    use Kind::*;
    match kind {
        Bool => "a boolean",
        I16 | I32 | I64 | U32 | U64 => "an integer",
        Decimal => "a decimal",
        F32 | F64 => "a float",
        Text | PaddedText => "text",
        Uuid => "a UUID",
        Date => "a date",
        Time => "a time of day",
        Naive | Timestamp => "a timestamp",
        Json => "JSON",
        Bytes => "bytes",
        Dynamic(_) => "untyped",
    }
}

/// The columns a row's hash covers on one side, each with its kind there and the form both
/// sides share. Built for both sides at once by [`RowHash::pair`], so that the two agree.
#[derive(Debug, Clone)]
pub struct RowHash {
    pub(crate) key: String,
    pub(crate) key_kind: Kind,
    /// (column, its kind on this side, form); the seed of each is its position.
    pub(crate) columns: Vec<(String, Kind, Form)>,
    pub flavor: Flavor,
}

/// The result columns of a query and how trueup reads each (`None`: it does not).
#[derive(Debug, Clone)]
pub struct Described {
    pub columns: Vec<String>,
    pub(crate) kinds: Vec<Option<Kind>>,
    /// Per column, the table (its OID) and column number it is read from unchanged, where
    /// the database says so.
    pub(crate) origins: Vec<Option<(u32, i16)>>,
}

impl Described {
    /// Whether column `i` holds instants a read can bound (`ChangedSince`): timestamps, and
    /// SQLite values declared `DATETIME` or not declared (text compared as Julian days).
    pub fn holds_instants(&self, i: usize) -> bool {
        use super::decode::SqliteHint;
        matches!(
            self.kinds[i],
            Some(
                Kind::Naive
                    | Kind::Timestamp
                    | Kind::Dynamic(SqliteHint::Datetime | SqliteHint::None)
            )
        )
    }

    /// `Err` (why, for the run to say) unless column `i` holds integers, which segments of a
    /// key range split. (A SQLite key's values are checked one by one as they are read.)
    pub fn integer_key(&self, i: usize) -> Result<(), String> {
        let kind = self.kinds[i].ok_or_else(|| {
            format!(
                "column `{}` has a type trueup does not read",
                self.columns[i]
            )
        })?;
        if matches!(
            kind,
            Kind::I16 | Kind::I32 | Kind::I64 | Kind::U32 | Kind::Dynamic(_)
        ) {
            Ok(())
        } else {
            Err(format!(
                "the key `{}` is {}: segments split integer keys only",
                self.columns[i],
                kind_name(kind)
            ))
        }
    }
}

impl RowHash {
    /// The row hashes of two sides: `key` is the key column's index on each side, `compared`
    /// each compared column's name and index on each side. `Err`: why these columns cannot
    /// be checksummed, for the run to say.
    pub fn pair(
        left: &Described,
        right: &Described,
        key: (usize, usize),
        compared: &[(String, usize, usize)],
        flavor: Flavor,
    ) -> Result<(RowHash, RowHash), String> {
        let kind = |d: &Described, i: usize| {
            d.kinds[i]
                .ok_or_else(|| format!("column `{}` has a type trueup does not read", d.columns[i]))
        };
        left.integer_key(key.0)?;
        right.integer_key(key.1)?;
        let (lk, rk) = (kind(left, key.0)?, kind(right, key.1)?);
        let mut l = Vec::with_capacity(compared.len());
        let mut r = Vec::with_capacity(compared.len());
        for (name, i, j) in compared {
            let (a, b) = (kind(left, *i)?, kind(right, *j)?);
            let form = Form::shared(a, b).map_err(|why| format!("column `{name}`: {why}"))?;
            // A SQLite side hashes per value ([`canonical_value`]), against the other side's
            // kind: that is the kind it keeps.
            let (a, b) = match (a, b) {
                (Kind::Dynamic(_), k) => (k, k),
                (k, Kind::Dynamic(_)) => (k, k),
                pair => pair,
            };
            l.push((left.columns[*i].clone(), a, form));
            r.push((right.columns[*j].clone(), b, form));
        }
        Ok((
            RowHash {
                key: left.columns[key.0].clone(),
                key_kind: lk,
                columns: l,
                flavor,
            },
            RowHash {
                key: right.columns[key.1].clone(),
                key_kind: rk,
                columns: r,
                flavor,
            },
        ))
    }
}

/// What to summarise on one side: the rows of `query` whose key lies in `range`, split
/// into `buckets` segments of equal key width (the last one may be narrower).
#[derive(Debug, Clone)]
pub struct SummaryRequest {
    pub query: String,
    pub hash: RowHash,
    pub range: super::KeyRange,
    pub buckets: u64,
    /// Whether rows with a NULL key are counted too (given apart from the buckets).
    pub null_keys: bool,
    /// Whether a key may repeat in the query's rows, so repeats must be counted (an ordered
    /// window over the key, as costly as the hashing); `false` only where proven (a unique
    /// index, see [`single_table`]).
    pub key_may_repeat: bool,
}

impl SummaryRequest {
    /// The width in keys of every bucket but maybe the last.
    pub fn width(&self) -> u64 {
        let span = (i128::from(self.range.high) - i128::from(self.range.low) + 1) as u128;
        let buckets = u128::from(self.buckets.max(1));
        span.div_ceil(buckets).max(1) as u64
    }
}

/// One segment's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    pub rows: u64,
    /// The sum of the rows' hashes (wide enough never to wrap).
    pub sum: HashSum,
    /// Rows whose key equals the key of the row before them in key order.
    pub repeats: u64,
}

/// A range's totals on one side (see [`totals_sql`]): its rows with a key as one segment, its
/// rows with a NULL key, and the sums of their keys' places and of their squares, which say
/// where those rows lie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub summary: SegmentSummary,
    pub null_keys: u64,
    /// Sums over the rows with a key of its place in the range (see [`key_shift`]) and of
    /// its square.
    pub key_sum: i128,
    pub key_squares: i128,
}

impl Totals {
    /// Reads the one row of [`totals_sql`]; `Err` names the cell that is no number.
    pub(crate) fn parse(cells: &[Option<String>]) -> Result<Totals, String> {
        let cell = |i: usize, what: &str| -> Result<&str, String> {
            cells
                .get(i)
                .and_then(|c| c.as_deref())
                .ok_or_else(|| format!("its {what} is missing"))
        };
        let integer = |i: usize, what: &str| -> Result<i128, String> {
            let s = cell(i, what)?;
            s.parse::<i128>()
                .map_err(|_| format!("its {what} `{s}` is not an integer"))
        };
        let count = |i: usize, what: &str| -> Result<u64, String> {
            u64::try_from(integer(i, what)?).map_err(|_| format!("its {what} is out of range"))
        };
        Ok(Totals {
            summary: SegmentSummary {
                rows: count(0, "row count")?,
                sum: integer(1, "sum")?.into(),
                repeats: count(2, "repeat count")?,
            },
            null_keys: count(3, "count of NULL keys")?,
            key_sum: integer(4, "sum of keys")?,
            key_squares: integer(5, "sum of squared keys")?,
        })
    }
}

/// A sum of row hashes, as two words: an `i128` is aligned to 16 bytes, which would make a
/// bucket of a fine split's summary (a million of them) take 64 bytes instead of 40.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashSum([u64; 2]);

impl From<i128> for HashSum {
    fn from(v: i128) -> Self {
        let u = v as u128;
        HashSum([u as u64, (u >> 64) as u64])
    }
}

impl HashSum {
    pub fn get(self) -> i128 {
        ((u128::from(self.0[1]) << 64) | u128::from(self.0[0])) as i128
    }
}

/// Seeds: the hash of column `i` (0 = key) is seeded with `SEED + 2i` and, where a form
/// hashes two parts, `SEED + 2i + 1`. Arbitrary, but fixed: both sides must use the same.
const SEED: i64 = 0x7472_7565_7570; // "trueup"

/// What a wide key's high half XORs into its seed: above 2^16, so that no change of a
/// NUMERIC's weight (XORed into `x` by the last NUMERIC column) can make it; otherwise a
/// row's key halves and `x` could trade places with another's.
const KEY_HIGH_HALF: i64 = 0x6869_6768; // "high"

/// What a NULL in column `i` contributes: a constant per column, so NULLs in different
/// columns differ and a NULL differs from every value but with a chance of 2^-64 (in a
/// NUMERIC column, what the seed is XORed with, see [`pg_numeric_hash`]).
fn null_marker(i: usize) -> i64 {
    marker(i as u64)
}

/// What a negative value of NUMERIC column `i` XORs into its seed (see [`pg_numeric_hash`]).
fn sign_marker(i: usize) -> i64 {
    marker(i as u64 | 1 << 32)
}

fn marker(i: u64) -> i64 {
    // splitmix64: well spread, reproducible.
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as i64
}

/// A NUMERIC column's hash, seeded by `seed` (an expression written once). `hash_numeric`
/// XORs the number's weight into its result, so `v` and `v × 10⁴` hash alike but for a few
/// bits, and two such columns of one row scaled alike would cancel in the row's XOR: a
/// row's NUMERIC columns are therefore chained, each seeded by the hash of the one before,
/// so that only the last one's weight reaches the XOR, which the key's hash then mixes.
fn pg_numeric_hash(quoted: &str, seed: &str, i: usize) -> String {
    let v = format!("({quoted})::numeric");
    // `hash_numeric` ignores the sign: it goes into the seed (one comparison per row; a CASE
    // testing the sign and NaN apart cost two, a sixth of a summary). So does a NULL, hashed
    // as 0 under the seed XORed with the column's marker (0 hashes as its seed minus one,
    // so NULL and 0 differ): the seed is not repeated in a fallback, so a chain of them
    // stays one expression per column. Both markers have bits set in the high half, which
    // the weight XORed into the column before (an int16, sign-extended) never reaches: a
    // sign flip here cannot undo a change of weight there (`(5, -7)` and `(5e8, 7)`).
    // Every special value hashes as its seed, so NaN and ±Infinity leave the chain as it
    // was (NaN and +Infinity alike): a read refuses all three (README, "How values
    // compare"), so no checksum hides what a stream would report.
    format!(
        "hash_numeric_extended(coalesce({v}, 0), ({seed}) # coalesce(({v} < 0)::int4::int8 * {}, {}))",
        sign_marker(i),
        null_marker(i)
    )
}

/// PostgreSQL's expression for the hash of `quoted` (of `kind`) under `form`, as column `i`.
pub(crate) fn pg_column_hash(quoted: &str, kind: Kind, form: Form, i: usize) -> String {
    let (s, t) = (SEED + 2 * i as i64, SEED + 2 * i as i64 + 1);
    let hash = match form {
        Form::Integer => {
            let v = if kind == Kind::Bool {
                format!("({quoted})::int4::int8")
            } else {
                format!("({quoted})::int8")
            };
            // `hashint8extended` folds the high half into the low one (so that it agrees
            // with the 4-byte hashes): two values with the same fold would hash alike.
            // Hashing the high half on its own as well tells them apart.
            format!("(hashint8extended({v}, {s}) # hashint4extended(({v} >> 32)::int4, {t}))")
        }
        Form::Numeric => return pg_numeric_hash(quoted, &s.to_string(), i),
        // A deterministic collation, so that the hash covers the bytes.
        Form::Text => format!("hashtextextended(({quoted})::text COLLATE \"C\", {s})"),
        // Seconds since 1970 as a double (exact to the microsecond from 1902 to 2106), and
        // the microseconds' own (folded) hash: two instants hash alike only if the double
        // and the fold both agree, which far-apart and near instants never do at once.
        Form::Instant => {
            let naive = if kind == Kind::Timestamp {
                format!("({quoted}) AT TIME ZONE 'UTC'")
            } else {
                quoted.to_owned()
            };
            format!(
                "(hashfloat8extended(date_part('epoch', {quoted}), {s}) # timestamp_hash_extended({naive}, {t}))"
            )
        }
        // Less than a day of seconds: the double is exact to the microsecond.
        Form::TimeOfDay => format!("hashfloat8extended(date_part('epoch', {quoted}), {s})"),
        // An infinite date fails the subtraction, and so the run, as it fails a stream.
        Form::Date => format!("hashint4extended(({quoted}) - DATE '2000-01-01', {s})"),
        Form::Bytes if kind == Kind::Bytes => {
            format!("hashtextextended(encode({quoted}, 'hex'), {s})")
        }
        // Text against bytes: its UTF-8 bytes, as `canonical` writes them.
        Form::Bytes => {
            format!("hashtextextended(encode(convert_to(({quoted})::text, 'UTF8'), 'hex'), {s})")
        }
    };
    format!("coalesce({hash}, {})", null_marker(i))
}

/// The engines that summarise segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    MySql,
}

/// The canonical text of a value of `kind` under `form`, as `engine` writes it: a letter
/// for its class (`n` numbers and booleans, `t` text, `i` instants, `d` dates, `h` times of
/// day, `b` bytes), then integers and numbers in plain decimal without trailing zeros
/// (`n10.5`, `n5`), instants in UTC as `YYYY-MM-DD HH:MM:SS.ffffff`, dates, times of day
/// with six fraction digits, bytes in lowercase hex (text against bytes: its UTF-8 bytes),
/// text as its length in characters, `:` and itself; `~` for NULL. On MySQL, a text or bytes
/// value whose form would pass `max_allowed_packet` is `#` and the MD5 of its bytes. Only text
/// can hold `|` or `~`, and its length says where it ends, so parts joined by `|` read back
/// one way only. [`canonical_value`] writes the same from a value trueup read.
pub(crate) fn canonical(engine: Engine, quoted: &str, kind: Kind, form: Form) -> String {
    let q = quoted;
    let text = match (engine, form) {
        (Engine::Postgres, Form::Integer) if kind == Kind::Bool => format!("({q})::int4::text"),
        (Engine::Postgres, Form::Integer) => format!("({q})::int8::text"),
        (Engine::Postgres, Form::Numeric) => format!("trim_scale(({q})::numeric)::text"),
        (Engine::Postgres, Form::Text) => format!("({q})::text"),
        // `to_char` writes no era and NULL for ±infinity: such values are written as
        // PostgreSQL's own text after an `x`, which no other engine writes (their segment
        // streams, and the stream says what it makes of them).
        (Engine::Postgres, Form::Instant) if kind == Kind::Timestamp => format!(
            "CASE WHEN isfinite({q}) AND {q} >= timestamptz '0001-01-01 00:00:00+00' \
             THEN to_char(({q}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') ELSE 'x' || ({q})::text END"
        ),
        (Engine::Postgres, Form::Instant) => format!(
            "CASE WHEN isfinite({q}) AND {q} >= timestamp '0001-01-01 00:00:00' \
             THEN to_char({q}, 'YYYY-MM-DD HH24:MI:SS.US') ELSE 'x' || ({q})::text END"
        ),
        (Engine::Postgres, Form::Date) => format!(
            "CASE WHEN isfinite({q}) AND {q} >= date '0001-01-01' \
             THEN to_char({q}, 'YYYY-MM-DD') ELSE 'x' || ({q})::text END"
        ),
        (Engine::Postgres, Form::TimeOfDay) => format!("to_char({q}, 'HH24:MI:SS.US')"),
        (Engine::Postgres, Form::Bytes) if kind == Kind::Bytes => format!("encode({q}, 'hex')"),
        // Text against bytes: its UTF-8 bytes, whatever the database's encoding.
        (Engine::Postgres, Form::Bytes) => {
            format!("encode(convert_to(({q})::text, 'UTF8'), 'hex')")
        }
        (Engine::MySql, Form::Integer) => format!("CAST({q} AS CHAR)"),
        // DECIMAL writes its whole scale: trailing zeros (and a bare point) are cut, but
        // only after a point (`100` stays).
        (Engine::MySql, Form::Numeric) => {
            let t = format!("CAST({q} AS CHAR)");
            format!(
                "IF(LOCATE('.', {t}) > 0, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {t})), {t})"
            )
        }
        // The UTF-8 bytes, whatever the column's charset (as the stream orders them).
        (Engine::MySql, Form::Text) => format!("CONVERT({q} USING utf8mb4)"),
        // The session's time zone is UTC (sqlx sets it), so TIMESTAMPs read as UTC.
        (Engine::MySql, Form::Instant) => format!("DATE_FORMAT({q}, '%Y-%m-%d %H:%i:%s.%f')"),
        (Engine::MySql, Form::Date) => format!("DATE_FORMAT({q}, '%Y-%m-%d')"),
        (Engine::MySql, Form::TimeOfDay) => format!("TIME_FORMAT({q}, '%H:%i:%s.%f')"),
        // The bytes trueup reads: a text column in a binary collation (`latin1_bin`, read as
        // bytes) arrives converted to utf8mb4, the session's character set; a binary one
        // (`VARBINARY`, `BLOB`) as stored.
        (Engine::MySql, Form::Bytes) => {
            // (Two hex strings meet in the IF, not two collations: a ucs2 column's would not
            // mix with utf8mb4's.)
            format!("LOWER(IF(CHARSET({q}) = 'binary', HEX({q}), HEX(CONVERT({q} USING utf8mb4))))")
        }
    };
    let class = match form {
        Form::Integer | Form::Numeric => "n",
        Form::Text => "t",
        Form::Instant => "i",
        Form::Date => "d",
        Form::TimeOfDay => "h",
        Form::Bytes => "b",
    };
    // MySQL's string functions give NULL, not an error, for a result longer than
    // `max_allowed_packet` (16 MiB on MariaDB: the hex of an 8 MiB value). Such a value is
    // written as `#` and the MD5 of the bytes its form spells out, which depends on it as
    // its form does and which no other engine writes (its segment streams there); never as
    // `~`, which would equal a NULL or any other value too long.
    let too_long = |hashed: String| format!("CONCAT('#', {hashed})");
    match (engine, form) {
        (Engine::Postgres, Form::Text) => {
            format!("coalesce('t' || length({text})::text || ':' || {text}, '~')")
        }
        (Engine::MySql, Form::Text) => format!(
            "COALESCE(CONCAT('t', CHAR_LENGTH({text}), ':', {text}), {}, '~')",
            too_long(format!("MD5({text})"))
        ),
        (Engine::MySql, Form::Bytes) => format!(
            "COALESCE(CONCAT('b', {text}), {}, '~')",
            too_long(format!(
                "IF(CHARSET({q}) = 'binary', MD5({q}), MD5(CONVERT({q} USING utf8mb4)))"
            ))
        ),
        (Engine::Postgres, _) => format!("coalesce('{class}' || {text}, '~')"),
        (Engine::MySql, _) => format!("COALESCE(CONCAT('{class}', {text}), '~')"),
    }
}

/// [`canonical`]'s text of a value trueup read (a SQLite side's, summarised in process);
/// `None` for a value with no canonical form (JSON, a digest, a float beyond a decimal's
/// range or not finite). A float is written as the shortest decimal that reads back as it,
/// as the merge compares it, so it matches a number the other side holds only when the merge
/// calls them equal.
pub(crate) fn canonical_value(value: &crate::domain::Value, other: Kind) -> Option<String> {
    use crate::domain::Value;
    use chrono::Timelike;
    let numeric_other = matches!(
        other,
        Kind::I16 | Kind::I32 | Kind::I64 | Kind::U32 | Kind::U64 | Kind::Decimal
    );
    Some(match value {
        Value::Null => "~".to_owned(),
        // A boolean equals the integers 0 and 1, never a decimal or a float: against a
        // decimal column it has no form (the segment streams and the merge says).
        Value::Bool(b) if other == Kind::Bool || (numeric_other && other != Kind::Decimal) => {
            format!("n{}", u8::from(*b))
        }
        Value::Bool(_) => return None,
        Value::Int(i) => format!("n{i}"),
        // A decimal or a float never equals a boolean.
        Value::Decimal(_) | Value::Float(_) if other == Kind::Bool => return None,
        Value::Decimal(d) => format!("n{}", d.normalize()),
        Value::Float(f) => format!("n{}", crate::domain::float_as_decimal(*f)?.normalize()),
        // Text against bytes (and bytes against text) in the other side's form: text equals
        // the bytes of its UTF-8 form; bytes that are no UTF-8 have no text form.
        Value::Text(t) if other == Kind::Bytes => format!("b{}", hex::encode(t.as_bytes())),
        Value::Text(t) => format!("t{}:{t}", t.chars().count()),
        // (Bytes that are no UTF-8 keep their own form, which no text has: their segment
        // streams, and the merge reports them.)
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(t) if matches!(other, Kind::Text | Kind::PaddedText | Kind::Uuid) => {
                format!("t{}:{t}", t.chars().count())
            }
            _ => format!("b{}", hex::encode(b)),
        },
        Value::Date(d) => format!("d{}", d.format("%Y-%m-%d")),
        // Six fraction digits say a whole microsecond only: finer instants have no form.
        Value::Time(t) if t.nanosecond() % 1000 != 0 => return None,
        Value::Time(t) => format!("h{}", t.format("%H:%M:%S%.6f")),
        Value::Timestamp(t) if t.nanosecond() % 1000 != 0 => return None,
        Value::Timestamp(t) => format!("i{}", t.format("%Y-%m-%d %H:%M:%S%.6f")),
        Value::Json(_) | Value::Digest(_) => return None,
    })
}

/// The 60 bits [`canonical_row_hash`] takes from the MD5 of a row's canonical parts.
pub(crate) fn canonical_row_hash_of(parts: &[String]) -> i128 {
    use md5::Digest;
    let digest = md5::Md5::digest(parts.join("|").as_bytes());
    // The first 15 hex digits: the first 7 bytes and the high half of the 8th.
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest[..8]);
    i128::from(u64::from_be_bytes(top) >> 4)
}

/// A row's canonical hash: 60 bits of the MD5 of its canonical text (60, so that it is a
/// non-negative integer on both engines, whose sums are then alike).
fn canonical_row_hash(engine: Engine, parts: &[String]) -> String {
    match engine {
        Engine::Postgres => format!(
            "('x' || substr(md5(concat_ws('|', {})), 1, 15))::bit(60)::int8",
            parts.join(", ")
        ),
        // A row whose parts together are longer than `max_allowed_packet` (each fits; see
        // [`canonical`]) is hashed by its parts' MD5s after a `#`, not dropped from the sum
        // as a NULL: a form no other engine writes, so its segment streams there.
        Engine::MySql => format!(
            "CAST(CONV(SUBSTRING(COALESCE(MD5(CONCAT_WS('|', {})), MD5(CONCAT_WS('|', '#', {}))), 1, 15), 16, 10) AS UNSIGNED)",
            parts.join(", "),
            parts
                .iter()
                .map(|p| format!("MD5({p})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The parts of a summary statement over `req`'s rows, as [`summary_sql`] and
/// [`totals_sql`] write them: the inner query's hash columns, the expression summed per row,
/// and the repeated-key marker. The row hash depends on `req.range` (a narrow range hashes
/// `key - low`), so statements whose sums are added or subtracted share their range.
struct Composed {
    key: String,
    hash: String,
    summed: String,
    /// `(inner column, its sum)`; no column where no key can repeat.
    repeats: (String, &'static str),
}

fn compose(engine: Engine, req: &SummaryRequest, quote: impl Fn(&str) -> String) -> Composed {
    let key = format!("trueup_q.{}", quote(&req.hash.key));
    let (low, high) = (req.range.low, req.range.high);
    let columns = std::iter::once((&req.hash.key, req.hash.key_kind, Form::Integer)).chain(
        req.hash
            .columns
            .iter()
            .map(|(c, kind, form)| (c, *kind, *form)),
    );
    // Typed: the inner query gives each row's key `k` and the XOR `x` of its compared
    // columns' hashes, and the outer one hashes the key seeded by `x`: one non-linear hash
    // of the whole row, so that rows changed alike do not cancel in a segment's sum (XOR and
    // sum are both linear). Canonical: the inner query gives the row's hash `h`.
    let hash = match req.hash.flavor {
        Flavor::Typed => {
            let mut xor = Vec::new();
            let mut numeric: Option<String> = None;
            for (i, (c, kind, form)) in columns.enumerate().skip(1) {
                let quoted = format!("trueup_q.{}", quote(c));
                if form == Form::Numeric {
                    let seed = numeric
                        .take()
                        .unwrap_or_else(|| (SEED + 2 * i as i64).to_string());
                    numeric = Some(pg_numeric_hash(&quoted, &seed, i));
                } else {
                    xor.push(pg_column_hash(&quoted, kind, form, i));
                }
            }
            xor.extend(numeric);
            if xor.is_empty() {
                xor.push(format!("{SEED}::int8"));
            }
            format!("{key}::int8 AS k, {} AS x", xor.join(" # "))
        }
        Flavor::Canonical => {
            let parts: Vec<String> = columns
                .map(|(c, kind, form)| {
                    canonical(engine, &format!("trueup_q.{}", quote(c)), kind, form)
                })
                .collect();
            format!("{} AS h", canonical_row_hash(engine, &parts))
        }
    };
    // Keys of a range narrower than 2^32 differ in the low half of `key - low`, where
    // `hashint8extended` alone tells them apart (it folds the high half into the low one):
    // one hash call for the key instead of two. Both sides summarise the same range, so
    // they hash each key alike.
    let summed = match req.hash.flavor {
        Flavor::Typed => {
            // A NULL key's rows are only counted (apart from the buckets), so their hash is
            // any constant.
            let null_key = 0;
            if i128::from(high) - i128::from(low) < 1 << 32 {
                format!("coalesce(hashint8extended(k - ({low})::int8, x), {null_key})")
            } else {
                // The high half under a seed of its own (see `pg_column_hash`).
                format!(
                    "coalesce(hashint8extended(k, x) # hashint4extended((k >> 32)::int4, x # {KEY_HIGH_HALF}), {null_key})"
                )
            }
        }
        Flavor::Canonical => "h".to_owned(),
    };
    // Where no key can repeat, no column of zeros to sum (a tenth of a summary's time).
    let marker = format!("CASE WHEN {key} = lag({key}) OVER (ORDER BY {key}) THEN 1 ELSE 0 END");
    let repeats = match (req.key_may_repeat, engine) {
        (false, _) => (String::new(), "'0'"),
        (true, Engine::Postgres) => (format!(", {marker} AS d"), "coalesce(sum(d), 0)::text"),
        (true, Engine::MySql) => (
            format!(", {marker} AS d"),
            "CAST(COALESCE(SUM(d), 0) AS CHAR)",
        ),
    };
    Composed {
        key,
        hash,
        summed,
        repeats,
    }
}

/// The statement summarising `req` on `engine`: one row per non-empty bucket (bucket, rows,
/// sum, repeats, all as text), and one with a NULL bucket for the NULL keys when asked for.
pub(crate) fn summary_sql(
    engine: Engine,
    req: &SummaryRequest,
    quote: impl Fn(&str) -> String,
) -> String {
    let (low, high) = (req.range.low, req.range.high);
    let width = req.width();
    let Composed {
        key,
        hash,
        summed,
        repeats: (repeats_column, repeats_sum),
    } = compose(engine, req, quote);
    let within = if req.null_keys {
        format!("({key} >= {low} AND {key} <= {high} OR {key} IS NULL)")
    } else {
        format!("{key} >= {low} AND {key} <= {high}")
    };
    let query = &req.query;
    // `key - low` fits a bigint: a range spans at most 2^63 keys (see the engine's split).
    // The outer query reads `x` more than once: `OFFSET 0` keeps the planner from pulling
    // the subquery up and computing the column hashes again.
    match engine {
        Engine::Postgres => format!(
            "SELECT b::text, count(*)::text, sum({summed})::text, {repeats_sum} FROM (\
             SELECT ({key}::int8 - ({low})::int8) / {width} AS b, {hash}{repeats_column} \
             FROM (\n{query}\n) AS trueup_q WHERE {within} OFFSET 0) AS trueup_s GROUP BY b"
        ),
        Engine::MySql => format!(
            "SELECT CAST(b AS CHAR), CAST(COUNT(*) AS CHAR), CAST(SUM(h) AS CHAR), {repeats_sum} \
             FROM (\
             SELECT (CAST({key} AS SIGNED) - ({low})) DIV {width} AS b, {hash}{repeats_column} \
             FROM (\n{query}\n) AS trueup_q WHERE {within}) AS trueup_s GROUP BY b"
        ),
    }
}

/// The statement totalling the rows of `req.range` on PostgreSQL (its `buckets` aside),
/// only those whose key `only` holds when given, in one row of text: the rows with a key,
/// the sum of their hashes (hashed as [`summary_sql`] hashes them for the same range), the
/// repeated keys, the rows with a NULL key (when `req.null_keys`), and the exact sums of each
/// key's place in the range ([`key_shift`]) and of its square. No grouping: without it a
/// pass over 10M rows costs ~0.8 of one in buckets. The two key sums say where the rows lie,
/// so that what two totals differ by can be located (a guess, which other totals then test:
/// see the engine's `checksum.rs`).
pub(crate) fn totals_sql(
    req: &SummaryRequest,
    only: Option<&super::KeyRanges>,
    quote: impl Fn(&str) -> String,
) -> String {
    let (low, high) = (req.range.low, req.range.high);
    let Composed {
        key,
        hash,
        summed,
        repeats: (repeats_column, repeats_sum),
    } = compose(Engine::Postgres, req, quote);
    let mut within = format!("{key} >= {low} AND {key} <= {high}");
    if req.null_keys {
        within = format!("({within} OR {key} IS NULL)");
    }
    if let Some(only) = only {
        within = format!("{within} AND {}", only.condition(&key));
    }
    // Bigint sums are exact (PostgreSQL adds them in 128 bits), where a double's sum of
    // squares over 10M keys is off by more than an outage's spread.
    let place = match key_shift(low, high) {
        0 => format!("(k - ({low})::int8)"),
        s => format!("((k >> {s}) - (({low})::int8 >> {s}))"),
    };
    let query = &req.query;
    format!(
        "SELECT count(k)::text, coalesce(sum({summed}), 0)::text, \
         {repeats_sum}, (count(*) - count(k))::text, coalesce(sum({place}), 0)::text, \
         coalesce(sum({place} * {place}), 0)::text FROM (\
         SELECT {hash}{repeats_column} \
         FROM (\n{query}\n) AS trueup_q WHERE {within} OFFSET 0) AS trueup_s"
    )
}

/// A key's place in `[low, high]` for [`totals_sql`]'s key sums is `(key >> s) - (low >> s)`
/// with this `s`: a shift that keeps every place at most 2^31, so that its square fits a
/// bigint. 0 (the offset itself) for a range of at most 2^31 keys.
pub fn key_shift(low: i64, high: i64) -> u32 {
    let last = (i128::from(high) - i128::from(low)).max(0) as u128;
    (128 - last.leading_zeros()).saturating_sub(31)
}

/// Memory for a summary of many buckets, as a statement raising PostgreSQL's `work_mem` for
/// its transaction only (never lowering it): a hash aggregate of more groups than fit spills
/// to disk, which more than doubles a fine split's pass (1.8 s against 4.3 s for 625,000
/// groups of 10M rows). About 100 bytes a group; `None` below 65,536 buckets or on MySQL.
pub(crate) fn summary_memory(engine: Engine, req: &SummaryRequest) -> Option<String> {
    const BYTES_PER_GROUP: u64 = 128;
    (engine == Engine::Postgres && req.buckets > 65_536).then(|| {
        let kib = req.buckets.saturating_mul(BYTES_PER_GROUP) / 1024;
        format!(
            "SELECT set_config('work_mem', greatest(pg_size_bytes(current_setting('work_mem')) / 1024, {kib})::text || 'kB', true)"
        )
    })
}

/// Fixed values under every form, hashed as `flavor` hashes them on `engine`, as one text:
/// two sources whose probes are equal hash every value alike (the same functions, byte
/// order and text forms).
pub(crate) fn probe_sql(engine: Engine, flavor: Flavor) -> String {
    let values: [(&str, &str, Kind, Form); 8] = [
        (
            "5000000001::int8",
            "CAST(5000000001 AS SIGNED)",
            Kind::I64,
            Form::Integer,
        ),
        ("true", "1", Kind::Bool, Form::Integer),
        (
            "-12.340::numeric",
            "CAST(-12.340 AS DECIMAL(10,3))",
            Kind::Decimal,
            Form::Numeric,
        ),
        ("'trueup ✓|~'::text", "'trueup ✓|~'", Kind::Text, Form::Text),
        (
            "timestamptz '2026-01-02 03:04:05.678901+00'",
            "CAST('2026-01-02 03:04:05.678901' AS DATETIME(6))",
            Kind::Timestamp,
            Form::Instant,
        ),
        (
            "date '2026-12-03'",
            "DATE '2026-12-03'",
            Kind::Date,
            Form::Date,
        ),
        (
            "time '03:04:05.5'",
            "CAST('03:04:05.5' AS TIME(6))",
            Kind::Time,
            Form::TimeOfDay,
        ),
        // (UTF-8, which MariaDB checks when it folds the text branch of a constant's form.)
        (
            "'\\x00c3a97f'::bytea",
            "X'00C3A97F'",
            Kind::Bytes,
            Form::Bytes,
        ),
    ];
    let probes: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, (pg, my, kind, form))| match (engine, flavor) {
            (Engine::Postgres, Flavor::Typed) => {
                format!("({})::text", pg_column_hash(pg, *kind, *form, i))
            }
            (Engine::Postgres, Flavor::Canonical) => {
                format!(
                    "({})::text",
                    canonical_row_hash(engine, &[canonical(engine, pg, *kind, *form)])
                )
            }
            (Engine::MySql, _) => format!(
                "CAST({} AS CHAR)",
                canonical_row_hash(engine, &[canonical(engine, my, *kind, *form)])
            ),
        })
        .collect();
    match engine {
        Engine::Postgres => format!("SELECT concat_ws(',', {})", probes.join(", ")),
        Engine::MySql => format!("SELECT CONCAT_WS(',', {})", probes.join(", ")),
    }
}

/// The table whose rows `query` returns at most once each, when its shape proves it: one
/// SELECT (no WITH, no set operation) from one plain table (no join, no table function), with
/// no grouping and no function call in its select list (a set-returning one repeats rows).
/// Gives the table's name as written and whether it says `ONLY` (an inherited table's
/// children are read too otherwise). `None`: not proven — the summary then counts repeats.
pub(crate) fn single_table(query: &str) -> Option<(String, bool)> {
    use sqlparser::ast::{
        Expr, GroupByExpr, SetExpr, Statement, TableFactor, TableInheritance, Visit, Visitor,
    };
    let statements =
        sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, query)
            .ok()?;
    let [Statement::Query(q)] = statements.as_slice() else {
        return None;
    };
    if q.with.is_some() || !q.pipe_operators.is_empty() {
        return None;
    }
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    let grouped = match &select.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(e, m) => !e.is_empty() || !m.is_empty(),
    };
    if !from.joins.is_empty()
        || grouped
        || select.having.is_some()
        || !select.lateral_views.is_empty()
        || !select.connect_by.is_empty()
    {
        return None;
    }
    let TableFactor::Table {
        name,
        args: None,
        inheritance,
        ..
    } = &from.relation
    else {
        return None;
    };
    struct CallsAFunction(bool);
    impl Visitor for CallsAFunction {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> std::ops::ControlFlow<()> {
            if matches!(expr, Expr::Function(_)) {
                self.0 = true;
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    // A set-returning function repeats rows from its select list, and from `ORDER BY`, where
    // PostgreSQL takes it too (`ORDER BY generate_series(1, 2)` returns each row twice).
    let mut calls = CallsAFunction(false);
    let _ = select.projection.visit(&mut calls);
    let _ = select.distinct.visit(&mut calls);
    let _ = q.order_by.visit(&mut calls);
    if calls.0 {
        return None;
    }
    let only = matches!(inheritance, Some(TableInheritance::Only { .. }));
    Some((name.to_string(), only))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_read_from_their_row_or_name_the_cell_that_is_no_number() {
        let row = |cells: [&str; 6]| cells.map(|c| Some(c.to_owned())).to_vec();
        let t = Totals::parse(&row([
            "10",
            "-170141183460469231731687303715884105728",
            "1",
            "2",
            "45",
            "285",
        ]))
        .unwrap();
        assert_eq!(
            (
                t.summary.rows,
                t.summary.sum.get(),
                t.summary.repeats,
                t.null_keys
            ),
            (10, i128::MIN, 1, 2)
        );
        assert_eq!((t.key_sum, t.key_squares), (45, 285));
        assert_eq!(
            Totals::parse(&row(["10", "x", "0", "0", "0", "0"])).unwrap_err(),
            "its sum `x` is not an integer"
        );
        assert_eq!(
            Totals::parse(&row(["-1", "0", "0", "0", "0", "0"])).unwrap_err(),
            "its row count is out of range"
        );
        let mut short = row(["1", "0", "0", "0", "0", "0"]);
        short[5] = None;
        assert_eq!(
            Totals::parse(&short).unwrap_err(),
            "its sum of squared keys is missing"
        );
    }

    #[test]
    fn a_key_place_squared_fits_a_bigint_in_any_range() {
        assert_eq!(key_shift(1, 1), 0);
        assert_eq!(key_shift(0, (1 << 31) - 1), 0);
        assert_eq!(key_shift(0, 1 << 31), 1);
        assert_eq!(key_shift(i64::MIN, i64::MAX), 33);
        for (low, high) in [
            (0, 1 << 31),
            (-5, 1 << 40),
            (i64::MIN, i64::MAX),
            (i64::MAX - 3, i64::MAX),
        ] {
            let s = key_shift(low, high);
            for k in [low, high, low / 2 + high / 2] {
                let place = i128::from(k >> s) - i128::from(low >> s);
                assert!(
                    (0..=(1 << 31)).contains(&place),
                    "{low}..{high}: {k} at {place}"
                );
                assert!(place * place <= i128::from(i64::MAX));
            }
        }
    }

    #[test]
    fn a_hash_sum_keeps_every_bit_of_an_i128() {
        for v in [0, 1, -1, i128::MAX, i128::MIN, 1 << 64, -(1 << 70) + 12345] {
            assert_eq!(HashSum::from(v).get(), v);
        }
        assert_eq!(std::mem::size_of::<(u64, SegmentSummary)>(), 40);
    }

    #[test]
    fn only_a_select_of_one_table_without_row_making_functions_proves_its_rows_unique() {
        assert_eq!(
            single_table("SELECT id AS payment_id, amount::text FROM public.payments WHERE x > 1"),
            Some(("public.payments".into(), false))
        );
        assert_eq!(
            single_table("SELECT * FROM ONLY \"Ledger\" ORDER BY 1 LIMIT 5"),
            Some(("\"Ledger\"".into(), true))
        );
        for repeats in [
            "SELECT p.id FROM payments p JOIN items i ON i.payment_id = p.id",
            "SELECT p.id FROM payments p, items i",
            "SELECT id, generate_series(1, 2) FROM payments",
            "SELECT id, unnest(tags) FROM payments",
            "SELECT id FROM payments ORDER BY generate_series(1, 2)",
            "SELECT DISTINCT ON (unnest(tags)) id FROM payments",
            "SELECT id FROM payments UNION ALL SELECT id FROM payments",
            "WITH p AS (SELECT * FROM payments) SELECT id FROM p",
            "SELECT id FROM (SELECT id FROM payments) s",
            "SELECT id FROM generate_series(1, 10) AS id",
            "SELECT id, count(*) FROM payments GROUP BY id",
            "not sql at all",
        ] {
            assert_eq!(single_table(repeats), None, "{repeats}");
        }
    }

    #[test]
    fn columns_that_compare_by_value_share_a_form_and_floats_json_and_mixed_classes_do_not() {
        use Kind::*;
        assert_eq!(Form::shared(I32, I64), Ok(Form::Integer));
        assert_eq!(Form::shared(Bool, I16), Ok(Form::Integer));
        assert_eq!(Form::shared(I64, Decimal), Ok(Form::Numeric));
        assert_eq!(Form::shared(PaddedText, Uuid), Ok(Form::Text));
        assert_eq!(Form::shared(Naive, Timestamp), Ok(Form::Instant));
        assert_eq!(Form::shared(Text, Bytes), Ok(Form::Bytes));
        assert_eq!(Form::shared(Bytes, PaddedText), Ok(Form::Bytes));
        // A SQLite value against the other side's kind: text and bytes as that side writes
        // them, bytes that are no UTF-8 in a form no text has.
        use crate::domain::Value;
        let text = Value::Text("é|".into());
        let bytes = Value::Bytes("é|".as_bytes().to_vec());
        assert_eq!(canonical_value(&text, Bytes).as_deref(), Some("bc3a97c"));
        assert_eq!(canonical_value(&bytes, Bytes).as_deref(), Some("bc3a97c"));
        assert_eq!(canonical_value(&bytes, Text).as_deref(), Some("t2:é|"));
        assert_eq!(canonical_value(&text, Text).as_deref(), Some("t2:é|"));
        assert_eq!(
            canonical_value(&Value::Bytes(vec![0xff]), Uuid).as_deref(),
            Some("bff")
        );
        for (l, r) in [
            (F64, F64),
            (Json, Json),
            (Bool, Decimal),
            (Date, Timestamp),
            (Text, I64),
        ] {
            assert!(Form::shared(l, r).is_err(), "{l:?} / {r:?}");
        }
        assert_eq!(
            Form::shared(Text, I64).unwrap_err(),
            "it is text on the left and an integer on the right"
        );
    }

    #[test]
    fn null_and_sign_markers_differ_per_column_and_move_a_numeric_seed_in_both_halves() {
        let nulls: std::collections::BTreeSet<i64> = (0..100).map(null_marker).collect();
        let signs: std::collections::BTreeSet<i64> = (0..100).map(sign_marker).collect();
        assert_eq!(nulls.len(), 100);
        assert_eq!(signs.len(), 100);
        assert!(nulls.is_disjoint(&signs));
        // A NUMERIC's seed is XORed with one of these (NULL, negative), or with the weight
        // of the NUMERIC before it (an int16, sign-extended), and a NULL hashes as 0 (its
        // seed minus one), a special value as its seed. Bits set and clear in both halves:
        // no weight change and no carry pattern of `seed ± small` is any of them, or the
        // XOR of a NULL and a sign marker.
        let both_halves = |m: i64| {
            let (high, low) = ((m as u64 >> 32) as u32, m as u32);
            high != 0 && high != u32::MAX && low != 0 && low != u32::MAX
        };
        for i in 0..100 {
            for m in [
                null_marker(i),
                sign_marker(i),
                null_marker(i) ^ sign_marker(i),
            ] {
                assert!(both_halves(m), "column {i}: {m:#x}");
            }
        }
    }

    #[test]
    fn a_bucket_width_covers_the_range_even_at_the_ends_of_bigint() {
        let req = |low, high, buckets| SummaryRequest {
            query: String::new(),
            hash: RowHash {
                key: "id".into(),
                key_kind: Kind::I64,
                columns: vec![],
                flavor: Flavor::Typed,
            },
            range: super::super::KeyRange {
                column: crate::domain::ColumnName::parse("id").unwrap(),
                low,
                high,
            },
            buckets,
            null_keys: false,
            key_may_repeat: true,
        };
        assert_eq!(req(1, 64, 64).width(), 1);
        assert_eq!(req(1, 65, 64).width(), 2);
        assert_eq!(req(0, i64::MAX, 2).width(), 1 << 62);
        assert_eq!(req(5, 5, 64).width(), 1);
    }
}
