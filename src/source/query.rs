//! What a read asks for, and the SQL every engine wraps it in: the user's query as a
//! subquery, the columns it must return, key filter and order.

use super::SourceError;
use crate::domain::{ColumnName, Read, SourceName};

/// A column the evaluator needs, and why (for the error when it is absent).
#[derive(Debug, Clone)]
pub struct Needed {
    pub column: ColumnName,
    pub role: &'static str,
}

/// What to read: the user's query, the columns it must return and the order to return rows in.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub query: Read,
    pub needed: Vec<Needed>,
    /// Sort by these columns, byte-wise for text (see `domain::value`). NULLs may come first
    /// or last: readers of ordered streams skip rows with a NULL key.
    pub order_by: Vec<ColumnName>,
    /// Only rows whose columns equal these values (canonical JSON, as stored with a
    /// violation's key): how one violation is re-checked without reading the whole table.
    /// Values are bound as parameters of the column's type, never spliced.
    pub filter: Vec<(ColumnName, serde_json::Value)>,
    /// `Some`: a text or bytes value longer than [`DIGEST_OVER`] may arrive as a
    /// [`Value::Digest`] the database computed (its length, SHA-256 and start) instead of
    /// crossing the network whole — except in the columns listed here, in keys, filter
    /// columns and needed columns other than compared ones. `None`: every value whole.
    pub digest_long_except: Option<Vec<String>>,
    /// `Some`: only rows whose integer key lies in one of these ranges — how a checksummed
    /// reconcile streams the segments that differ. Their bounds (and the keys of narrow ones)
    /// are integers written as literals, so the read keeps PostgreSQL's bulk path.
    pub key_ranges: Option<KeyRanges>,
    /// `Some`: only rows whose key equals one of these keys — how an incremental reconcile
    /// reads both sides of the keys that changed. Values are bound as parameters of each
    /// column's type, never spliced.
    pub keys: Option<KeySet>,
    /// `Some`: only rows whose change column is at or after an instant — how an incremental
    /// reconcile finds what changed.
    pub changed_since: Option<ChangedSince>,
}

impl ReadRequest {
    /// A read of `query` as it is: no columns required of it, no order, filter or digests.
    pub fn plain(query: Read) -> Self {
        Self {
            query,
            needed: Vec::new(),
            order_by: Vec::new(),
            filter: Vec::new(),
            digest_long_except: None,
            key_ranges: None,
            keys: None,
            changed_since: None,
        }
    }

    /// The SQL of a read from a database (a request reaches a database's reader only by a
    /// mistake in the code: it fails, never reads something else).
    pub(crate) fn sql(&self, source: &SourceName) -> Result<&str, SourceError> {
        self.query.sql().ok_or_else(|| SourceError::WrongClass {
            source_name: source.clone(),
            is: "a database",
            why: format!(
                "the side asks it for an HTTP request ({}); write `query:` for a database source",
                self.query
            ),
        })
    }
}

/// Keys to read: per key, one value per column, in the order of `columns`, sorted as
/// [`crate::domain::Value::key_cmp`] orders keys.
///
/// The database finds the candidate rows (with its key index, by its own comparison); a read
/// keeps only rows whose key equals one of these as trueup compares keys, so a collation
/// that calls `acme` and `Acme`, or `a` and `a `, equal adds nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySet {
    pub columns: Vec<ColumnName>,
    pub keys: Vec<Vec<crate::domain::Value>>,
}

impl KeySet {
    /// At most this many keys go into one statement (far below every engine's limit on
    /// parameters, and small enough for a quick plan).
    pub const MAX_PER_READ: usize = 1000;

    /// Whether `key` (one value per column) is one of the set's keys.
    pub fn holds(&self, key: &[&crate::domain::Value]) -> bool {
        self.keys
            .binary_search_by(|k| {
                k.iter()
                    .zip(key)
                    .map(|(a, b)| a.key_cmp(b))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .is_ok()
    }
}

/// The rows whose change column reached `since` (and, when given, not past `until`: read
/// by SQL sources only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedSince {
    pub column: ColumnName,
    pub since: chrono::DateTime<chrono::Utc>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// The rows whose integer key column lies between two bounds, both included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub column: ColumnName,
    pub low: i64,
    pub high: i64,
}

/// The rows whose integer key column lies in one of several ranges, each `(low, high)` with
/// both bounds included, in key order and disjoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRanges {
    pub column: ColumnName,
    pub ranges: Vec<(i64, i64)>,
}

impl KeyRanges {
    /// A range spanning at most this many keys is written as its keys (`IN (...)`), which
    /// every engine plans as lookups in the key index in key order; a wider one as bounds.
    pub const LISTED_SPAN: u64 = 256;
    /// At most this many listed keys, or bounded ranges, go into one statement (a quick plan;
    /// far below every engine's limit on a statement's size).
    pub const MAX_LISTED_KEYS: u64 = 10_000;
    pub const MAX_BOUNDED: usize = 64;

    /// One range.
    pub fn between(column: ColumnName, low: i64, high: i64) -> Self {
        KeyRanges {
            column,
            ranges: vec![(low, high)],
        }
    }

    /// The keys of a range, when it is narrow enough to list them.
    fn listed(low: i64, high: i64) -> Option<std::ops::RangeInclusive<i64>> {
        let span = i128::from(high) - i128::from(low) + 1;
        (span >= 1 && span <= i128::from(Self::LISTED_SPAN)).then_some(low..=high)
    }

    /// How much of a statement a range takes: (listed keys, bounded ranges).
    pub fn weight(low: i64, high: i64) -> (u64, usize) {
        match Self::listed(low, high) {
            Some(keys) => (keys.count() as u64, 0),
            None => (0, 1),
        }
    }

    /// The condition on `quoted` (the key column as the engine names it): the listed keys of
    /// narrow ranges in one `IN`, each wide range by its bounds, joined by `OR`.
    pub(crate) fn condition(&self, quoted: &str) -> String {
        let mut listed = Vec::new();
        let mut terms = Vec::new();
        for &(low, high) in &self.ranges {
            match Self::listed(low, high) {
                Some(keys) => listed.extend(keys.map(|k| k.to_string())),
                None => terms.push(format!("{quoted} >= {low} AND {quoted} <= {high}")),
            }
        }
        if !listed.is_empty() {
            terms.insert(0, format!("{quoted} IN ({})", listed.join(", ")));
        }
        match terms.as_slice() {
            [] => "1 = 0".to_owned(),
            [one] => one.clone(),
            _ => format!("(({}))", terms.join(") OR (")),
        }
    }
}

/// Text and bytes values longer than this may be read as digests (see
/// [`ReadRequest::digest_long_except`]).
pub const DIGEST_OVER: usize = 64 << 10;

impl ReadRequest {
    /// Which result columns may arrive as digests.
    pub(crate) fn digestible(&self, columns: &[String]) -> Vec<bool> {
        let Some(except) = &self.digest_long_except else {
            return vec![false; columns.len()];
        };
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        columns
            .iter()
            .map(|c| {
                !except.iter().any(|e| same(e, c))
                    && !self.order_by.iter().any(|k| same(k.as_str(), c))
                    && !self.filter.iter().any(|(k, _)| same(k.as_str(), c))
                    && !self
                        .needed
                        .iter()
                        .any(|n| n.role != COMPARED && same(n.column.as_str(), c))
            })
            .collect()
    }
}

/// The role of a needed column that is only compared (and so may be read as a digest).
pub const COMPARED: &str = "a compared column";

pub(crate) fn index_of(columns: &[String], column: &str) -> Option<usize> {
    columns.iter().position(|c| c == column).or_else(|| {
        let mut matches = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eq_ignore_ascii_case(column));
        match (matches.next(), matches.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    })
}

/// Checks the needed columns against what the query returns; gives each needed column's
/// actual name.
pub(crate) fn resolve_needed(
    source: &SourceName,
    columns: &[String],
    req: &ReadRequest,
) -> Result<Vec<String>, SourceError> {
    let mut order = Vec::new();
    for n in &req.needed {
        if index_of(columns, n.column.as_str()).is_none() {
            return Err(SourceError::MissingColumn {
                source_name: source.clone(),
                column: n.column.to_string(),
                role: n.role,
                available: columns.join(", "),
            });
        }
    }
    for c in &req.order_by {
        let i = index_of(columns, c.as_str()).ok_or_else(|| SourceError::MissingColumn {
            source_name: source.clone(),
            column: c.to_string(),
            role: "a key",
            available: columns.join(", "),
        })?;
        order.push(columns[i].clone());
    }
    Ok(order)
}

/// The actual result-column name of each filter column, in filter order.
pub(crate) fn resolve_filter(
    source: &SourceName,
    columns: &[String],
    req: &ReadRequest,
) -> Result<Vec<usize>, SourceError> {
    req.filter
        .iter()
        .map(|(c, _)| {
            index_of(columns, c.as_str()).ok_or_else(|| SourceError::MissingColumn {
                source_name: source.clone(),
                column: c.to_string(),
                role: "a key",
                available: columns.join(", "),
            })
        })
        .collect()
}

/// A filter value that cannot be bound as the column's type.
pub(crate) fn filter_value_error(
    source: &SourceName,
    column: &str,
    value: &serde_json::Value,
    wanted: &str,
) -> SourceError {
    SourceError::Decode {
        source_name: source.clone(),
        column: column.to_owned(),
        message: format!("key value {value} cannot be compared as {wanted}"),
    }
}

/// The user's query as a subquery: only a row-returning query parses there.
pub(crate) fn wrap(query: &str) -> String {
    wrap_selecting(query, "*")
}

/// The user's query as a subquery, selecting `list` from it.
pub(crate) fn wrap_selecting(query: &str, list: &str) -> String {
    // The newline before `)` keeps a trailing `-- comment` from swallowing it.
    format!("SELECT {list} FROM (\n{query}\n) AS trueup_q")
}

/// Whether `sql` holds more than one statement: a `;` outside string literals, quoted
/// identifiers and comments. PostgreSQL and MySQL refuse such strings when they are prepared,
/// and every read prepares its wrapped query first — also on PostgreSQL, whose bulk read then
/// sends the same text as a simple-protocol COPY, which alone would run several statements;
/// SQLite would run every statement, so trueup refuses them before it prepares anything.
pub(crate) fn has_several_statements(sql: &str) -> bool {
    let body = sql.trim().trim_end_matches(';');
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == q {
                        // A doubled quote is an escaped quote inside the literal.
                        if bytes.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{KeyRanges, has_several_statements};
    use crate::domain::ColumnName;

    #[test]
    fn narrow_ranges_are_read_by_their_keys_and_wide_ones_by_their_bounds() {
        let ranges = |ranges: &[(i64, i64)]| KeyRanges {
            column: ColumnName::parse("id").unwrap(),
            ranges: ranges.to_vec(),
        };
        assert_eq!(ranges(&[]).condition("k"), "1 = 0");
        assert_eq!(ranges(&[(5, 1000)]).condition("k"), "k >= 5 AND k <= 1000");
        assert_eq!(
            ranges(&[(-2, 1), (7, 7)]).condition("k"),
            "k IN (-2, -1, 0, 1, 7)"
        );
        assert_eq!(
            ranges(&[(1, 3), (100, 1000), (2000, 2255), (3000, 3256)]).condition("k"),
            format!(
                "((k IN (1, 2, 3, {})) OR (k >= 100 AND k <= 1000) OR (k >= 3000 AND k <= 3256))",
                (2000..=2255)
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
        // The ends of bigint: listed where narrow, bounded where not.
        assert_eq!(
            ranges(&[(i64::MAX - 1, i64::MAX)]).condition("k"),
            format!("k IN ({}, {})", i64::MAX - 1, i64::MAX)
        );
        assert_eq!(
            ranges(&[(i64::MIN, i64::MAX)]).condition("k"),
            format!("k >= {} AND k <= {}", i64::MIN, i64::MAX)
        );
        assert_eq!(KeyRanges::weight(1, 256), (256, 0));
        assert_eq!(KeyRanges::weight(1, 257), (0, 1));
    }

    #[test]
    fn one_statement_with_semicolons_inside_literals_and_comments_is_one() {
        for sql in [
            "SELECT 1",
            "SELECT 1;",
            "SELECT ';' AS x",
            "SELECT 'it''s; fine' AS x",
            "SELECT \"a;b\" FROM t",
            "SELECT 1 -- trailing; comment",
            "SELECT /* ; */ 1",
            "SELECT [a;b] FROM t",
        ] {
            assert!(!has_several_statements(sql), "{sql}");
        }
    }

    #[test]
    fn a_second_statement_is_found() {
        for sql in [
            "SELECT 1; DELETE FROM t",
            "SELECT 1 AS id); DELETE FROM t; SELECT (1",
            "SELECT 'x'; PRAGMA query_only = OFF",
            "SELECT 1 /* c */; ATTACH 'x.db' AS y",
        ] {
            assert!(has_several_statements(sql), "{sql}");
        }
    }
}
