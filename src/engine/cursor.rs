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

    async fn fill(&mut self) -> Result<(), EngineError> {
        while self.peeked.is_none() && !self.done {
            if let Some(row) = self.batch.next() {
                self.rows_read += 1;
                // A NULL key identifies nothing and engines disagree on where NULLs sort.
                if self.key_idx.iter().any(|&i| row[i].is_null()) {
                    self.null_keys += 1;
                    continue;
                }
                self.peeked = Some(row);
                return Ok(());
            }
            match self.stream.next_batch().await {
                Some(Ok(b)) => self.batch = b.into_iter(),
                Some(Err(e)) => return Err(e.into()),
                None => self.done = true,
            }
        }
        Ok(())
    }

    pub async fn next(&mut self) -> Result<Option<Row>, EngineError> {
        self.fill().await?;
        Ok(self.peeked.take())
    }

    /// The next key group, checking that keys never go backwards.
    pub async fn next_group(&mut self) -> Result<Option<Group>, EngineError> {
        let Some(first) = self.next().await? else {
            return Ok(None);
        };
        self.rest_of_group(first, None).await.map(Some)
    }

    /// The rest of the group whose first row is `first` (from [`Cursor::next`]), noting
    /// whether a row after the first passes `probe` (rows are not kept: a group of any size
    /// is read in constant memory).
    pub async fn rest_of_group(
        &mut self,
        first: Row,
        probe: Option<&(dyn Fn(&Row) -> bool + Sync)>,
    ) -> Result<Group, EngineError> {
        let mut count = 1;
        let mut later_matched = false;
        loop {
            self.fill().await?;
            // The fields apart, so that the look-ahead and the key indices borrow together
            // (no clone of the indices per row).
            let order = match &self.peeked {
                None => break,
                Some(next) => match compare_keys(&first, &self.key_idx, next, &self.key_idx) {
                    Ordering::Greater => Err(self
                        .key_idx
                        .iter()
                        .map(|&i| next[i].clone())
                        .collect::<Vec<_>>()),
                    other => Ok(other),
                },
            };
            match order {
                Ok(Ordering::Equal) => {
                    let row = self.next().await?;
                    if let (Some(probe), Some(row), false) = (probe, &row, later_matched) {
                        later_matched = probe(row);
                    }
                    count += 1;
                }
                Ok(_) => break,
                Err(current) => {
                    let previous: Vec<Value> =
                        self.key_idx.iter().map(|&i| first[i].clone()).collect();
                    return Err(EngineError::OutOfOrder {
                        side: self.side,
                        row: self.rows_read,
                        previous: key_text(&previous),
                        current: key_text(&current),
                    });
                }
            }
        }
        Ok(Group {
            first,
            count,
            later_matched,
        })
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
}
