//! A row-at-a-time view over a [`RowStream`] with one row of look-ahead and order checking.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::domain::Value;
use crate::source::{Row, RowStream};

use super::{EngineError, key_text};

pub(super) struct Cursor {
    stream: RowStream,
    batch: std::vec::IntoIter<Row>,
    peeked: Option<Row>,
    /// A group [`Cursor::next_group`] was reading when the batch in hand ran out.
    partial: Option<Group>,
    pub rows_read: u64,
    /// Rows skipped because a key column was NULL.
    pub null_keys: u64,
    pub key_idx: Arc<[usize]>,
    side: &'static str,
    done: bool,
}

/// Rows of one key, as the merge sees them: the first row and how many there were.
pub(super) struct Group {
    pub first: Row,
    pub count: u64,
    /// Whether a row after the first passed the probe the group was read with.
    pub later_matched: bool,
}

impl Cursor {
    pub fn new(stream: RowStream, key_idx: Vec<usize>, side: &'static str) -> Self {
        Self {
            stream,
            batch: Vec::new().into_iter(),
            peeked: None,
            partial: None,
            rows_read: 0,
            null_keys: 0,
            key_idx: key_idx.into(),
            side,
            done: false,
        }
    }

    pub fn columns(&self) -> &[String] {
        self.stream.columns()
    }

    /// Moves the next row with a key from the batch in hand to the look-ahead (a row with a
    /// NULL key is counted and skipped); `false` when that batch ran out first and the stream
    /// has not ended: the next batch must be awaited ([`Cursor::refill`]). The merge reads
    /// most rows from the batch in hand, without an `await` per row (which, nested, cost
    /// about a tenth of a streamed run's CPU).
    fn fill_in_hand(&mut self) -> bool {
        while self.peeked.is_none() && !self.done {
            let Some(row) = self.batch.next() else {
                return false;
            };
            self.rows_read += 1;
            // A NULL key identifies nothing and engines disagree on where NULLs sort.
            if self.key_idx.iter().any(|&i| row[i].is_null()) {
                self.null_keys += 1;
                continue;
            }
            self.peeked = Some(row);
        }
        true
    }

    /// Takes the stream's next batch, or notes that it ended.
    async fn refill(&mut self) -> Result<(), EngineError> {
        match self.stream.next_batch().await {
            Some(Ok(b)) => self.batch = b.into_iter(),
            Some(Err(e)) => return Err(e.into()),
            None => self.done = true,
        }
        Ok(())
    }

    pub async fn next(&mut self) -> Result<Option<Row>, EngineError> {
        while !self.fill_in_hand() {
            self.refill().await?;
        }
        Ok(self.peeked.take())
    }

    /// The next key group, checking that keys never go backwards.
    pub async fn next_group(&mut self) -> Result<Option<Group>, EngineError> {
        loop {
            if let Some(group) = self.next_group_in_hand()? {
                return Ok(group);
            }
            self.refill().await?;
        }
    }

    /// The next key group if the rows in hand hold all of it (`Some(None)`: the stream
    /// ended); `None` when the batch ran out first: the group read so far is kept, and goes
    /// on once the next batch is in hand.
    fn next_group_in_hand(&mut self) -> Result<Option<Option<Group>>, EngineError> {
        let mut group = match self.partial.take() {
            Some(group) => group,
            None => {
                if !self.fill_in_hand() {
                    return Ok(None);
                }
                match self.peeked.take() {
                    Some(first) => Group {
                        first,
                        count: 1,
                        later_matched: false,
                    },
                    None => return Ok(Some(None)),
                }
            }
        };
        if self.group_in_hand(&mut group, None)? {
            Ok(Some(Some(group)))
        } else {
            self.partial = Some(group);
            Ok(None)
        }
    }

    /// The rest of the group whose first row is `first` (from [`Cursor::next`]), noting
    /// whether a row after the first passes `probe` (rows are not kept: a group of any size
    /// is read in constant memory).
    pub async fn rest_of_group(
        &mut self,
        first: Row,
        probe: Option<&(dyn Fn(&Row) -> bool + Sync)>,
    ) -> Result<Group, EngineError> {
        let mut group = Group {
            first,
            count: 1,
            later_matched: false,
        };
        while !self.group_in_hand(&mut group, probe)? {
            self.refill().await?;
        }
        Ok(group)
    }

    /// Adds the rows in hand that follow `group` with its key to it; `true` once the group is
    /// complete (the look-ahead holds a row with a greater key, or the stream ended), `false`
    /// when the batch in hand ran out first.
    fn group_in_hand(
        &mut self,
        group: &mut Group,
        probe: Option<&(dyn Fn(&Row) -> bool + Sync)>,
    ) -> Result<bool, EngineError> {
        loop {
            if !self.fill_in_hand() {
                return Ok(false);
            }
            let Some(next) = &self.peeked else {
                return Ok(true);
            };
            match compare_keys(&group.first, &self.key_idx, next, &self.key_idx) {
                Ordering::Equal => {
                    let row = self.peeked.take();
                    if let (Some(probe), Some(row), false) = (probe, &row, group.later_matched) {
                        group.later_matched = probe(row);
                    }
                    group.count += 1;
                }
                Ordering::Less => return Ok(true),
                Ordering::Greater => {
                    let previous: Vec<Value> = self
                        .key_idx
                        .iter()
                        .map(|&i| group.first[i].clone())
                        .collect();
                    let current: Vec<Value> =
                        self.key_idx.iter().map(|&i| next[i].clone()).collect();
                    return Err(EngineError::OutOfOrder {
                        side: self.side,
                        row: self.rows_read,
                        previous: key_text(&previous),
                        current: key_text(&current),
                    });
                }
            }
        }
    }
}

pub(super) fn compare_keys(a: &[Value], a_idx: &[usize], b: &[Value], b_idx: &[usize]) -> Ordering {
    for (&i, &j) in a_idx.iter().zip(b_idx) {
        match a[i].key_cmp(&b[j]) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(keys: &[i64]) -> Cursor {
        let rows = keys.iter().map(|k| vec![Value::Int(*k)]).collect();
        Cursor::new(
            RowStream::from_rows(vec!["id".into()], rows),
            vec![0],
            "left",
        )
    }

    #[tokio::test]
    async fn groups_count_repeated_keys() {
        let mut c = cursor(&[1, 2, 2, 2, 3]);
        let mut got = Vec::new();
        while let Some(g) = c.next_group().await.unwrap() {
            got.push((g.first[0].clone(), g.count));
        }
        assert_eq!(
            got,
            vec![(Value::Int(1), 1), (Value::Int(2), 3), (Value::Int(3), 1)]
        );
        assert_eq!(c.rows_read, 5);
    }

    #[tokio::test]
    async fn rows_with_a_null_key_are_counted_and_skipped() {
        let rows = vec![
            vec![Value::Null],
            vec![Value::Int(1)],
            vec![Value::Null],
            vec![Value::Int(2)],
        ];
        let mut c = Cursor::new(
            RowStream::from_rows(vec!["id".into()], rows),
            vec![0],
            "left",
        );
        let mut keys = Vec::new();
        while let Some(g) = c.next_group().await.unwrap() {
            keys.push(g.first[0].clone());
        }
        assert_eq!(keys, vec![Value::Int(1), Value::Int(2)]);
        assert_eq!((c.rows_read, c.null_keys), (4, 2));
    }

    #[tokio::test]
    async fn keys_going_backwards_stop_the_merge_with_the_row_number() {
        let mut c = cursor(&[1, 3, 2]);
        c.next_group().await.unwrap();
        let err = c.next_group().await.err().unwrap();
        let EngineError::OutOfOrder {
            side,
            row,
            previous,
            current,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(
            (*side, *row, previous.as_str(), current.as_str()),
            ("left", 3, "(3)", "(2)")
        );
        assert!(err.to_string().contains("out of order at row 3"), "{err}");
    }

    #[tokio::test]
    async fn a_stream_cut_off_before_its_end_is_an_error_after_the_rows_it_did_send() {
        let rows = vec![vec![Value::Int(1)], vec![Value::Int(2)]];
        let mut c = Cursor::new(
            RowStream::cut_off(vec!["id".into()], vec![rows]),
            vec![0],
            "right",
        );
        assert_eq!(
            c.next_group().await.unwrap().unwrap().first[0],
            Value::Int(1)
        );
        let err = c
            .next_group()
            .await
            .err()
            .expect("an incomplete read is an error");
        assert!(err.to_string().contains("the read did not finish"), "{err}");
        // Asked again, it does not turn into the end of the rows.
        assert!(c.next_group().await.is_err());
    }

    /// `rows` cut into batches at each of `cuts` (row positions, ascending; a repeated cut
    /// sends an empty batch), each row `[key, tag]` (a NULL key where `None`).
    fn cursor_in_batches(rows: &[(Option<i64>, i64)], cuts: &[usize]) -> Cursor {
        let row = |(k, tag): &(Option<i64>, i64)| {
            vec![k.map_or(Value::Null, Value::Int), Value::Int(*tag)]
        };
        let mut batches = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([rows.len()].iter()) {
            batches.push(rows[from..cut].iter().map(row).collect());
            from = cut;
        }
        Cursor::new(
            RowStream::in_batches(vec!["id".into(), "tag".into()], batches),
            vec![0],
            "right",
        )
    }

    #[tokio::test]
    async fn a_group_split_by_a_batch_boundary_is_read_whole_wherever_the_cut_falls() {
        // 2 three times, NULL keys around and inside the groups.
        let rows = [
            (Some(1), 0),
            (None, 0),
            (Some(2), 1),
            (Some(2), 2),
            (None, 0),
            (Some(2), 3),
            (Some(3), 4),
            (None, 0),
        ];
        let mut cut_sets: Vec<Vec<usize>> = (0..=rows.len()).map(|c| vec![c]).collect();
        cut_sets.extend([vec![1, 2, 3, 4, 5, 6, 7], vec![3, 3, 3], vec![0, 0, 8, 8]]);
        for cuts in cut_sets {
            let mut c = cursor_in_batches(&rows, &cuts);
            let mut got = Vec::new();
            while let Some(g) = c.next_group().await.unwrap() {
                got.push((g.first[0].clone(), g.first[1].clone(), g.count));
            }
            assert_eq!(
                got,
                vec![
                    (Value::Int(1), Value::Int(0), 1),
                    (Value::Int(2), Value::Int(1), 3),
                    (Value::Int(3), Value::Int(4), 1)
                ],
                "cut at {cuts:?}"
            );
            assert_eq!((c.rows_read, c.null_keys), (8, 3), "cut at {cuts:?}");
            assert!(c.next_group().await.unwrap().is_none(), "cut at {cuts:?}");
        }
    }

    #[tokio::test]
    async fn a_probe_sees_the_later_rows_of_its_group_in_the_next_batch() {
        // The group of key 2: its first row (tag 1), then the row the probe looks for
        // (tag 3), the batches cut before, after and around it (an empty batch between).
        let rows = [(Some(2), 1), (Some(2), 2), (Some(2), 3), (Some(5), 4)];
        let wants_tag_3 = |row: &Row| row[1] == Value::Int(3);
        for cuts in [vec![1], vec![2], vec![2, 2], vec![3]] {
            let mut c = cursor_in_batches(&rows, &cuts);
            let first = c.next().await.unwrap().unwrap();
            let group = c.rest_of_group(first, Some(&wants_tag_3)).await.unwrap();
            assert_eq!(
                (group.count, group.later_matched),
                (3, true),
                "cut at {cuts:?}"
            );
            assert_eq!(c.next().await.unwrap().unwrap()[0], Value::Int(5));
        }
        let mut c = cursor_in_batches(&rows[..2], &[1]);
        let first = c.next().await.unwrap().unwrap();
        let group = c.rest_of_group(first, Some(&wants_tag_3)).await.unwrap();
        assert_eq!((group.count, group.later_matched), (2, false));
    }

    #[tokio::test]
    async fn keys_going_backwards_across_a_batch_boundary_stop_the_merge_with_the_row_number() {
        let rows = [(Some(1), 0), (Some(3), 0), (Some(3), 0), (Some(2), 0)];
        let mut c = cursor_in_batches(&rows, &[3]);
        c.next_group().await.unwrap();
        let err = c.next_group().await.err().unwrap();
        assert!(
            matches!(&err, EngineError::OutOfOrder { row: 4, previous, current, .. } if previous == "(3)" && current == "(2)"),
            "{err:?}"
        );
    }
}
