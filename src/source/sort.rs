//! Rows put in key order within a memory budget: an API or a stream delivers rows in its own
//! order, and the merge join needs them in key order.
//!
//! Rows are held until they fill [`Sorter::BUDGET`] bytes, then sorted and written to a
//! temporary file as one run (a JSON line per row); the runs are merged, at most
//! [`FAN_IN`] at a time. The sort is stable: rows with equal keys keep the order they
//! arrived in, so a key's duplicates come out as the source sent them.
//!
//! No well-kept crate does this for rows compared by a custom order with a byte budget
//! (`extsort` counts items and is unmaintained; `ext-sort` counts items, needs a `Copy`
//! comparator and a rayon pool per sort), so it is written here, small.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};

use super::Row;
use crate::domain::Value;

/// At most this many runs are read at once; more are merged into longer runs first.
const FAN_IN: usize = 64;

/// Compares two rows by the values at `at`, as keys compare.
fn by_key(at: &[usize], a: &Row, b: &Row) -> Ordering {
    at.iter()
        .map(|&i| a[i].key_cmp(&b[i]))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

pub(super) struct Sorter {
    at: Vec<usize>,
    budget: usize,
    held: Vec<Row>,
    held_bytes: usize,
    dir: Option<tempfile::TempDir>,
    runs: Vec<File>,
}

impl Sorter {
    /// Bytes of row values held in memory before a run is written.
    pub(super) const BUDGET: usize = 24 << 20;

    /// Sorts by the columns at `at`, holding at most `budget` bytes of values.
    pub(super) fn new(at: Vec<usize>, budget: usize) -> Self {
        Self {
            at,
            budget,
            held: Vec::new(),
            held_bytes: 0,
            dir: None,
            runs: Vec::new(),
        }
    }

    /// Whether rows went to disk (for the log, and tests).
    pub(super) fn spilled(&self) -> usize {
        self.runs.len()
    }

    pub(super) fn push(&mut self, row: Row) -> std::io::Result<()> {
        // The row's own allocation and its values' heap parts (a JSON value's boxed node
        // included), so the budget is what the held rows take.
        let boxed = |v: &Value| match v {
            Value::Json(_) => std::mem::size_of::<serde_json::Value>(),
            _ => 0,
        };
        self.held_bytes += std::mem::size_of::<Row>()
            + row.capacity() * std::mem::size_of::<Value>()
            + row.iter().map(|v| v.size() + boxed(v)).sum::<usize>();
        self.held.push(row);
        if self.held_bytes >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> std::io::Result<()> {
        let mut rows = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        rows.sort_by(|a, b| by_key(&self.at, a, b));
        let dir = match &self.dir {
            Some(d) => d,
            None => self
                .dir
                .insert(tempfile::Builder::new().prefix("trueup-sort-").tempdir()?),
        };
        let run = write_run(dir.path(), rows.into_iter().map(Ok))?;
        self.runs.push(run);
        if self.runs.len() >= FAN_IN * 2 {
            // Keep the open files few: merge the oldest runs into one.
            let older: Vec<File> = self.runs.drain(..FAN_IN).collect();
            let merged = write_run(dir.path(), Merge::new(self.at.clone(), older)?)?;
            self.runs.insert(0, merged);
        }
        Ok(())
    }

    /// Every row pushed, in key order.
    pub(super) fn finish(mut self) -> std::io::Result<Sorted> {
        if self.runs.is_empty() {
            self.held.sort_by(|a, b| by_key(&self.at, a, b));
            return Ok(Sorted::Memory(self.held.into_iter()));
        }
        if !self.held.is_empty() {
            self.spill()?;
        }
        let dir = self.dir.take();
        let mut runs = std::mem::take(&mut self.runs);
        while runs.len() > FAN_IN {
            let path = dir
                .as_ref()
                .map(|d| d.path().to_owned())
                .unwrap_or_default();
            let older: Vec<File> = runs.drain(..FAN_IN).collect();
            let merged = write_run(&path, Merge::new(self.at.clone(), older)?)?;
            runs.insert(0, merged);
        }
        Ok(Sorted::Runs {
            merge: Merge::new(self.at, runs)?,
            _dir: dir,
        })
    }
}

/// Writes rows as one run, returning it rewound for reading. The file is unlinked at once
/// (an anonymous temporary file): nothing is left behind, whatever ends the process.
fn write_run(
    dir: &std::path::Path,
    rows: impl Iterator<Item = std::io::Result<Row>>,
) -> std::io::Result<File> {
    let file = tempfile::tempfile_in(dir)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    for row in rows {
        serde_json::to_writer(&mut out, &row?)?;
        out.write_all(b"\n")?;
    }
    let mut file = out
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    std::io::Seek::rewind(&mut file)?;
    Ok(file)
}

/// Sorted rows, from memory or merged from runs on disk.
pub(super) enum Sorted {
    Memory(std::vec::IntoIter<Row>),
    Runs {
        merge: Merge,
        _dir: Option<tempfile::TempDir>,
    },
}

impl Iterator for Sorted {
    type Item = std::io::Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(rows) => rows.next().map(Ok),
            Sorted::Runs { merge, .. } => merge.next(),
        }
    }
}

/// A k-way merge of sorted runs; equal keys come out in run order (older first), which keeps
/// the sort stable.
pub(super) struct Merge {
    at: Vec<usize>,
    readers: Vec<std::io::Lines<BufReader<File>>>,
    heap: BinaryHeap<Head>,
    failed: Option<std::io::Error>,
}

struct Head {
    row: Row,
    run: usize,
    at: std::sync::Arc<[usize]>,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    /// Reversed: `BinaryHeap` is a max-heap and the smallest key must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        by_key(&self.at, &other.row, &self.row).then(other.run.cmp(&self.run))
    }
}

impl Merge {
    fn new(at: Vec<usize>, runs: Vec<File>) -> std::io::Result<Self> {
        let mut merge = Self {
            at,
            readers: runs
                .into_iter()
                .map(|f| BufReader::with_capacity(1 << 16, f).lines())
                .collect(),
            heap: BinaryHeap::new(),
            failed: None,
        };
        for run in 0..merge.readers.len() {
            merge.refill(run)?;
        }
        Ok(merge)
    }

    fn refill(&mut self, run: usize) -> std::io::Result<()> {
        if let Some(line) = self.readers[run].next() {
            let row: Row = serde_json::from_str(&line?)?;
            self.heap.push(Head {
                row,
                run,
                at: self.at.clone().into(),
            });
        }
        Ok(())
    }
}

impl Iterator for Merge {
    type Item = std::io::Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let head = self.heap.pop()?;
        if let Err(e) = self.refill(head.run) {
            self.failed = Some(e);
        }
        Some(Ok(head.row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(keys: &[(i64, &str)]) -> Vec<Row> {
        keys.iter()
            .map(|(k, tag)| vec![Value::Int(*k), Value::Text((*tag).into())])
            .collect()
    }

    fn sort(input: Vec<Row>, budget: usize) -> (Vec<Row>, usize) {
        let mut sorter = Sorter::new(vec![0], budget);
        for row in input {
            sorter.push(row).unwrap();
        }
        let spilled = sorter.spilled();
        let out = sorter
            .finish()
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (out, spilled)
    }

    #[test]
    fn rows_come_out_in_key_order_and_equal_keys_in_arrival_order_in_memory_and_from_runs() {
        let input = rows(&[(3, "a"), (1, "b"), (3, "c"), (2, "d"), (1, "e"), (3, "f")]);
        let want = rows(&[(1, "b"), (1, "e"), (2, "d"), (3, "a"), (3, "c"), (3, "f")]);
        let (in_memory, spilled) = sort(input.clone(), usize::MAX);
        assert_eq!((in_memory, spilled), (want.clone(), 0));
        // A budget of one row: every row is a run of its own.
        let (from_runs, spilled) = sort(input, 1);
        assert_eq!((from_runs, spilled), (want, 6));
    }

    #[test]
    fn more_runs_than_the_fan_in_are_merged_in_passes_and_nothing_is_lost() {
        // 1,000 rows, one run each: runs are merged in passes of 64.
        let input: Vec<Row> = (0..1000)
            .map(|i| vec![Value::Int((i * 7919) % 1000), Value::Int(i)])
            .collect();
        let mut sorter = Sorter::new(vec![0], 1);
        for row in input {
            sorter.push(row).unwrap();
        }
        assert!(
            sorter.spilled() < FAN_IN * 2,
            "runs are merged as they pile up"
        );
        let out: Vec<Row> = sorter.finish().unwrap().map(Result::unwrap).collect();
        let keys: Vec<i64> = out
            .iter()
            .map(|r| match r[0] {
                Value::Int(k) => k,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(keys, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn every_kind_of_value_survives_a_run_on_disk() {
        use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
        let row: Row = vec![
            Value::Int(1),
            Value::Null,
            Value::Bool(true),
            Value::Decimal("12.50".parse().unwrap()),
            Value::Float(0.25),
            Value::Text("é|~\n".into()),
            Value::Bytes(vec![0, 255]),
            Value::Date(NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()),
            Value::Time(NaiveTime::from_hms_micro_opt(3, 4, 5, 6).unwrap()),
            Value::Timestamp(Utc.with_ymd_and_hms(2026, 12, 4, 1, 2, 3).unwrap()),
            Value::Json(Box::new(serde_json::json!({"a": [1, "b"]}))),
        ];
        let (out, spilled) = sort(vec![row.clone(), row.clone()], 1);
        assert_eq!(spilled, 2);
        assert_eq!(out, vec![row.clone(), row]);
        // The decimal keeps its scale: 12.50, not 12.5.
        assert!(matches!(&out[0][3], Value::Decimal(d) if d.to_string() == "12.50"));
    }
}
