//! The ledger's SQL, written once for both backends. Both dialects accept `$N` parameters,
//! `ON CONFLICT ... DO UPDATE` and `RETURNING`; JSON columns are JSONB in PostgreSQL and TEXT
//! in SQLite and are bound as `Json` either way.

macro_rules! impl_store {
    // `$begin` starts a write transaction: SQLite needs `BEGIN IMMEDIATE` so that two writers
    // wait for each other (busy timeout) instead of failing when a read lock upgrades.
    // `$skip_locked` is how a claim query skips rows another worker holds: PostgreSQL needs
    // `FOR UPDATE SKIP LOCKED`; SQLite has one writer at a time and needs nothing.
    ($store:ty, $db:ty, $backend:literal, $begin:literal, $skip_locked:literal, $replicas:literal) => {
        impl $store {
            /// Appends one entry to the audit log on `conn` — inside the caller's transaction,
            /// so a change and its audit entry commit together.
            async fn write_audit(
                conn: &mut <$db as sqlx::Database>::Connection,
                at: chrono::DateTime<chrono::Utc>,
                actor: &str,
                action: &str,
                target: &str,
                details: &serde_json::Value,
            ) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(
                    "INSERT INTO audit_log (at, actor, action, target, details) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(at)
                .bind(actor)
                .bind(action)
                .bind(target)
                .bind(sqlx::types::Json(details))
                .fetch_one(conn)
                .await
            }

            /// Records `run` on the unfinished tick `tick` still holds (and marks it finished
            /// with `finished`), in the caller's transaction; `LostTick` when the tick is no
            /// longer its holder's.
            async fn record_on_held_tick(
                conn: &mut <$db as sqlx::Database>::Connection,
                invariant: &$crate::domain::InvariantName,
                tick: &$crate::store::TickRef,
                run: $crate::domain::RunId,
                finished: bool,
            ) -> Result<(), $crate::store::StoreError> {
                let held = sqlx::query(
                    "UPDATE ticks SET finished = $4, run_id = $5 WHERE invariant = $1 AND fire_at = $2 AND owner = $3 AND finished = $6",
                )
                .bind(invariant.as_str())
                .bind(tick.fire_at)
                .bind(&tick.owner)
                .bind(finished)
                .bind(run)
                .bind(false)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if held != 1 {
                    return Err($crate::store::StoreError::LostTick);
                }
                Ok(())
            }

            /// Drops what a run staged (its observations and covered keys), in the transaction
            /// that completes or abandons it.
            async fn drop_staged(
                conn: &mut <$db as sqlx::Database>::Connection,
                run: $crate::domain::RunId,
            ) -> Result<(), sqlx::Error> {
                for table in ["run_observations", "run_coverage", "run_segments"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE run_id = $1"))
                        .bind(run)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            /// Stages a batch of a run's violations, numbered from `first_seq`; `segment` says
            /// which segment and attempt of a split run found them. A violation staged twice
            /// stays once, as its latest attempt found it (an older attempt never overwrites).
            async fn stage(
                pool: &sqlx::Pool<$db>,
                run: $crate::domain::RunId,
                invariant: &$crate::domain::InvariantName,
                first_seq: i64,
                batch: &[$crate::domain::Violation],
                segment: Option<(i32, i32)>,
            ) -> Result<(), sqlx::Error> {
                // One row per fingerprint in a statement, the first found: PostgreSQL refuses
                // an upsert that meets a row it inserted itself ("cannot affect row a second
                // time"), where SQLite keeps the first; a query giving one key twice (a check
                // over two bad lines of one order) must not fail the run on one backend only.
                let mut seen = std::collections::HashSet::with_capacity(batch.len());
                let rows: Vec<(i64, String, &$crate::domain::Violation)> = batch
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        let fingerprint = v.fingerprint(invariant).to_string();
                        seen.insert(fingerprint.clone())
                            .then(|| (first_seq + i as i64, fingerprint, v))
                    })
                    .collect();
                // 10 parameters a row; chunks stay far below both engines' parameter limits.
                for chunk in rows.chunks(1000) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO run_observations (run_id, seq, fingerprint, invariant, kind, key, event_at, evidence, segment, attempt) ",
                    );
                    qb.push_values(chunk.iter(), |mut b, (seq, fingerprint, v)| {
                        b.push_bind(run)
                            .push_bind(*seq)
                            .push_bind(fingerprint.clone())
                            .push_bind(invariant.as_str().to_owned())
                            .push_bind(v.kind.as_str())
                            .push_bind(sqlx::types::Json(v.key_json()))
                            .push_bind(v.event_at)
                            .push_bind(sqlx::types::Json(v.evidence.clone()))
                            .push_bind(segment.map(|s| s.0))
                            .push_bind(segment.map(|s| s.1));
                    });
                    // (NULL attempts, an unsplit run's, compare as unknown: nothing updates.)
                    qb.push(
                        " ON CONFLICT (run_id, fingerprint) DO UPDATE SET \
                           seq = excluded.seq, kind = excluded.kind, key = excluded.key, \
                           event_at = excluded.event_at, evidence = excluded.evidence, \
                           segment = excluded.segment, attempt = excluded.attempt \
                         WHERE excluded.attempt > run_observations.attempt",
                    );
                    qb.build().execute(pool).await?;
                }
                Ok(())
            }

            /// The WHERE conditions of a violation filter (after `WHERE 1 = 1`).
            fn push_filter<'a>(
                qb: &mut sqlx::QueryBuilder<'a, $db>,
                filter: &'a $crate::store::ViolationFilter,
            ) {
                use $crate::store::StatusFilter;
                if !filter.invariants.is_empty() {
                    qb.push(" AND invariant IN (");
                    let mut sep = qb.separated(", ");
                    for name in &filter.invariants {
                        sep.push_bind(name.as_str());
                    }
                    qb.push(")");
                }
                match filter.status {
                    StatusFilter::Active => {
                        qb.push(" AND status IN ('open', 'reopened')");
                    }
                    StatusFilter::Only(s) => {
                        qb.push(" AND status = ").push_bind(s.as_str());
                    }
                    StatusFilter::All => {}
                }
                if let Some(kind) = filter.kind {
                    qb.push(" AND kind = ").push_bind(kind.as_str());
                }
                if let Some(run) = filter.new_in_run {
                    qb.push(" AND (first_run_id = ")
                        .push_bind(run)
                        .push(" OR reopened_run_id = ")
                        .push_bind(run)
                        .push(")");
                }
                if let Some(since) = filter.since {
                    qb.push(" AND last_seen >= ").push_bind(since);
                }
                if let Some(until) = filter.until {
                    qb.push(" AND first_seen < ").push_bind(until);
                }
                if let Some(after) = filter.after_id {
                    qb.push(" AND id > ").push_bind(after);
                }
                if let Some(from) = filter.event_from {
                    qb.push(" AND event_at >= ").push_bind(from);
                }
                if let Some(to) = filter.event_until {
                    qb.push(" AND event_at < ").push_bind(to);
                }
                if let Some(w) = &filter.window {
                    // The business event's time when there is one, else when trueup first
                    // saw the violation.
                    qb.push(" AND ((event_at IS NOT NULL AND event_at >= ").push_bind(w.from);
                    if let Some(to) = w.to {
                        qb.push(" AND event_at < ").push_bind(to);
                    }
                    qb.push(") OR (event_at IS NULL AND first_seen >= ").push_bind(w.from);
                    if let Some(to) = w.to {
                        qb.push(" AND first_seen < ").push_bind(to);
                    }
                    qb.push("))");
                }
            }

            /// Every column of a violation, for [`Self::violation_row`]; ends in `WHERE 1 = 1`.
            const VIOLATIONS: &str =
                "SELECT id, fingerprint, invariant, kind, key, status, first_seen, last_seen, resolved_at, \
                        event_at, times_reopened, first_run_id, last_run_id, evidence \
                 FROM violations WHERE 1 = 1";

            /// Every column of a run, for [`Self::run_row`]; ends in `WHERE 1 = 1`.
            const RUNS: &str =
                "SELECT id, invariant, started_at, finished_at, status, rows_left, rows_right, observed, \
                        counts, not_yet_due, null_keys, truncated, new_count, open_count, reopened_count, \
                        resolved_count, uncovered_count, coverage, error \
                 FROM runs WHERE 1 = 1";

            fn violation_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::store::ViolationRecord, sqlx::Error> {
                use sqlx::Row;
                let status: String = row.try_get("status")?;
                let key: sqlx::types::Json<serde_json::Value> = row.try_get("key")?;
                let evidence: sqlx::types::Json<serde_json::Value> = row.try_get("evidence")?;
                let times_reopened: i32 = row.try_get("times_reopened")?;
                Ok($crate::store::ViolationRecord {
                    id: row.try_get("id")?,
                    fingerprint: row.try_get("fingerprint")?,
                    invariant: row.try_get("invariant")?,
                    kind: row.try_get("kind")?,
                    key: key.0,
                    status: $crate::domain::ViolationStatus::parse(&status),
                    first_seen: row.try_get("first_seen")?,
                    last_seen: row.try_get("last_seen")?,
                    resolved_at: row.try_get("resolved_at")?,
                    event_at: row.try_get("event_at")?,
                    times_reopened: times_reopened.into(),
                    first_run_id: row.try_get("first_run_id")?,
                    last_run_id: row.try_get("last_run_id")?,
                    evidence: evidence.0,
                })
            }

            fn run_row(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::RunRecord, sqlx::Error> {
                use sqlx::Row;
                let status: String = row.try_get("status")?;
                let counts: sqlx::types::Json<
                    std::collections::BTreeMap<$crate::domain::ViolationKind, u64>,
                > = row.try_get("counts")?;
                let n = |c: &str| -> Result<u64, sqlx::Error> {
                    Ok(row.try_get::<i64, _>(c)?.max(0) as u64)
                };
                // Runs recorded before coverage was kept read everything.
                let coverage: Option<sqlx::types::Json<$crate::domain::Coverage>> =
                    row.try_get("coverage")?;
                Ok($crate::store::RunRecord {
                    id: row.try_get("id")?,
                    invariant: row.try_get("invariant")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                    status: $crate::domain::RunStatus::parse(&status),
                    stats: $crate::domain::RunStats {
                        rows_left: n("rows_left")?,
                        rows_right: n("rows_right")?,
                        observed: n("observed")?,
                        counts: counts.0,
                        not_yet_due: n("not_yet_due")?,
                        null_keys: n("null_keys")?,
                        truncated: row.try_get("truncated")?,
                        compared: None,
                        coverage: coverage.map(|c| c.0).unwrap_or_default(),
                        marks: None,
                        split: None,
                    },
                    change: $crate::domain::LedgerChange {
                        new: n("new_count")?,
                        still_open: n("open_count")?,
                        reopened: n("reopened_count")?,
                        resolved: n("resolved_count")?,
                        uncovered: n("uncovered_count")?,
                    },
                    error: row.try_get("error")?,
                })
            }

            fn audit_row(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::AuditEntry, sqlx::Error> {
                use sqlx::Row;
                let details: sqlx::types::Json<serde_json::Value> = row.try_get("details")?;
                Ok($crate::store::AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    details: details.0,
                })
            }

            fn tick(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::Tick, sqlx::Error> {
                use sqlx::Row;
                Ok($crate::store::Tick {
                    invariant: row.try_get("invariant")?,
                    fire_at: row.try_get("fire_at")?,
                    owner: row.try_get("owner")?,
                    finished: row.try_get("finished")?,
                    run_id: row.try_get("run_id")?,
                    taken_over: row.try_get("taken_over")?,
                    missed: row.try_get("missed")?,
                })
            }

            fn outbox_item(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::store::OutboxItem, sqlx::Error> {
                use sqlx::Row;
                let payload: sqlx::types::Json<serde_json::Value> = row.try_get("payload")?;
                let attempts: i32 = row.try_get("attempts")?;
                Ok($crate::store::OutboxItem {
                    id: row.try_get("id")?,
                    message: $crate::store::OutboxMessage {
                        dedup_key: row.try_get("dedup_key")?,
                        channel: row.try_get("channel")?,
                        payload: payload.0,
                    },
                    attempts: attempts.into(),
                    created_at: row.try_get("created_at")?,
                    delivered_at: row.try_get("delivered_at")?,
                    last_error: row.try_get("last_error")?,
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn begin_run(
                &self,
                invariant: &$crate::domain::InvariantName,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::domain::RunId, $crate::store::StoreError> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO runs (invariant, started_at, status) VALUES ($1, $2, 'running') RETURNING id",
                )
                .bind(invariant.as_str())
                .bind(at)
                .fetch_one(&self.pool)
                .await?;
                Ok(id)
            }

            async fn observe(
                &self,
                run: $crate::domain::RunId,
                invariant: &$crate::domain::InvariantName,
                first_seq: u64,
                batch: &[$crate::domain::Violation],
            ) -> Result<(), $crate::store::StoreError> {
                Self::stage(&self.pool, run, invariant, first_seq as i64, batch, None).await?;
                Ok(())
            }

            async fn cover(
                &self,
                run: $crate::domain::RunId,
                keys: &[serde_json::Value],
            ) -> Result<(), $crate::store::StoreError> {
                for chunk in keys.chunks(1000) {
                    let mut qb: sqlx::QueryBuilder<'_, $db> =
                        sqlx::QueryBuilder::new("INSERT INTO run_coverage (run_id, key) ");
                    qb.push_values(chunk, |mut b, key| {
                        b.push_bind(run).push_bind(sqlx::types::Json(key));
                    });
                    qb.push(" ON CONFLICT (run_id, key) DO NOTHING");
                    qb.build().execute(&self.pool).await?;
                }
                Ok(())
            }

            async fn watermark(
                &self,
                invariant: &$crate::domain::InvariantName,
            ) -> Result<Option<$crate::domain::Watermark>, $crate::store::StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT definition, left_mark, right_mark, full_at FROM watermarks WHERE invariant = $1",
                )
                .bind(invariant.as_str())
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some($crate::domain::Watermark {
                    marks: $crate::domain::Marks {
                        definition: row.try_get("definition")?,
                        left: row.try_get("left_mark")?,
                        right: row.try_get("right_mark")?,
                    },
                    full_at: row.try_get("full_at")?,
                }))
            }

            async fn complete_run(
                &self,
                run: $crate::domain::RunId,
                invariant: &$crate::domain::InvariantName,
                stats: &$crate::domain::RunStats,
                at: chrono::DateTime<chrono::Utc>,
                tick: Option<&$crate::store::TickRef>,
            ) -> Result<$crate::domain::LedgerChange, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                if let Some(t) = tick {
                    Self::record_on_held_tick(&mut tx, invariant, t, run, true).await?;
                }
                // A run that staged nothing (no violation, no covered key, no segment) only
                // resolves: there is nothing to merge, count or drop — five round trips less
                // for the common run of a healthy invariant. Asked of the tables, not of
                // `stats`, so that nothing staged is ever skipped.
                let staged: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM run_observations WHERE run_id = $1) \
                         OR EXISTS (SELECT 1 FROM run_coverage WHERE run_id = $1) \
                         OR EXISTS (SELECT 1 FROM run_segments WHERE run_id = $1)",
                )
                .bind(run)
                .fetch_one(&mut *tx)
                .await?;
                if staged {
                    // A split run's violations are those of each segment's completing attempt; an
                    // earlier attempt (its worker died or lost the lease) may still have written.
                    sqlx::query(
                        "DELETE FROM run_observations WHERE run_id = $1 AND segment IS NOT NULL \
                           AND NOT EXISTS (SELECT 1 FROM run_segments s WHERE s.run_id = run_observations.run_id \
                             AND s.seq = run_observations.segment AND s.attempt = run_observations.attempt \
                             AND s.status = 'done')",
                    )
                    .bind(run)
                    .execute(&mut *tx)
                    .await?;
                    // `WHERE true` lets SQLite tell the upsert clause from a join condition.
                    sqlx::query(
                        "INSERT INTO violations (fingerprint, invariant, kind, key, status, first_seen, last_seen, \
                                                 first_run_id, last_run_id, times_reopened, event_at, evidence) \
                         SELECT fingerprint, invariant, kind, key, 'open', $2, $2, run_id, run_id, 0, event_at, evidence \
                         FROM run_observations WHERE run_id = $1 AND true ORDER BY seq \
                         ON CONFLICT (fingerprint) DO UPDATE SET \
                           last_seen = excluded.last_seen, \
                           last_run_id = excluded.last_run_id, \
                           event_at = excluded.event_at, \
                           evidence = excluded.evidence, \
                           status = CASE WHEN violations.status = 'resolved' THEN 'reopened' ELSE violations.status END, \
                           reopened_run_id = CASE WHEN violations.status = 'resolved' THEN excluded.last_run_id \
                                                  ELSE violations.reopened_run_id END, \
                           times_reopened = violations.times_reopened \
                                            + CASE WHEN violations.status = 'resolved' THEN 1 ELSE 0 END, \
                           resolved_at = NULL, \
                           resolved_run_id = NULL \
                         WHERE violations.last_run_id < excluded.last_run_id \
                           AND (violations.resolved_run_id IS NULL OR violations.resolved_run_id < excluded.last_run_id)",
                    )
                    .bind(run)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                // Runs of one invariant may overlap (a verification, an API run, `trueup check`
                // beside the schedule): a violation takes the word of the run that began last
                // (run ids grow as runs begin). So a run neither reopens nor sees again what a
                // run begun after it resolved or saw (the upsert's WHERE), nor resolves what a
                // later run saw (`last_run_id < $2`).
                // A violation the run did not see resolves only if the run covered its key:
                // every key in a full pass, the staged keys in an incremental one, the keys
                // whose event time lies in a windowed one's window.
                let full = stats.coverage.is_full();
                let window_from = stats.coverage.window_from();
                let resolved = if stats.truncated {
                    0
                } else {
                    sqlx::query(
                        "UPDATE violations SET status = 'resolved', resolved_at = $1, resolved_run_id = $2 \
                         WHERE invariant = $3 AND status <> 'resolved' AND last_run_id < $2 \
                           AND ($4 OR key IN (SELECT key FROM run_coverage WHERE run_id = $2) \
                                OR ($5 IS NOT NULL AND event_at IS NOT NULL AND event_at >= $5))",
                    )
                    .bind(at)
                    .bind(run)
                    .bind(invariant.as_str())
                    .bind(full)
                    .bind(window_from)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                };
                // Open violations this run did not speak for: those of keys it did not cover,
                // and (for any run) those a run begun after it saw, which it leaves as they
                // are. They are open after it all the same: a run that a newer one overrules
                // never reads as 'holds' and never clears an alert.
                let uncovered: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM violations \
                     WHERE invariant = $1 AND status <> 'resolved' AND last_run_id <> $2",
                )
                .bind(invariant.as_str())
                .bind(run)
                .fetch_one(&mut *tx)
                .await?;
                // A truncated run stored only some of what it found: its marks would have the
                // next incremental run skip the rest (their keys may change on neither side
                // again), and its full pass would put off the next one. The next run reads
                // from the previous marks again.
                if let Some(marks) = stats.marks.as_ref().filter(|_| !stats.truncated) {
                    sqlx::query(
                        "INSERT INTO watermarks (invariant, definition, left_mark, right_mark, full_at, run_id) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (invariant) DO UPDATE SET \
                           definition = excluded.definition, \
                           left_mark = excluded.left_mark, \
                           right_mark = excluded.right_mark, \
                           run_id = excluded.run_id, \
                           full_at = CASE WHEN $7 THEN excluded.full_at ELSE watermarks.full_at END",
                    )
                    .bind(invariant.as_str())
                    .bind(&marks.definition)
                    .bind(marks.left)
                    .bind(marks.right)
                    .bind(at)
                    .bind(run)
                    .bind(full)
                    .execute(&mut *tx)
                    .await?;
                }
                let (new, reopened, still_open): (i64, i64, i64) = if !staged {
                    // Only what this run inserted or saw again carries its id.
                    (0, 0, 0)
                } else {
                    sqlx::query_as(
                    "SELECT \
                       COALESCE(SUM(CASE WHEN first_run_id = $1 THEN 1 ELSE 0 END), 0), \
                       COALESCE(SUM(CASE WHEN reopened_run_id = $1 THEN 1 ELSE 0 END), 0), \
                       COALESCE(SUM(CASE WHEN first_run_id <> $1 \
                                          AND (reopened_run_id IS NULL OR reopened_run_id <> $1) \
                                         THEN 1 ELSE 0 END), 0) \
                     FROM violations WHERE last_run_id = $1",
                    )
                    .bind(run)
                    .fetch_one(&mut *tx)
                    .await?
                };
                let change = $crate::domain::LedgerChange {
                    new: new as u64,
                    still_open: still_open as u64,
                    reopened: reopened as u64,
                    resolved,
                    uncovered: uncovered.max(0) as u64,
                };
                // After the ledger was rewritten, before it commits: the transaction must roll
                // all of it back.
                fail::fail_point!("store.commit", |_| Err($crate::store::StoreError::Database(
                    sqlx::Error::Protocol("the commit failed (injected)".into())
                )));
                if staged {
                    Self::drop_staged(&mut tx, run).await?;
                }
                // Only a run still running completes (not one a takeover failed meanwhile).
                let completed = sqlx::query(
                    "UPDATE runs SET status = 'succeeded', finished_at = $2, rows_left = $3, rows_right = $4, \
                       observed = $5, counts = $6, not_yet_due = $7, truncated = $8, new_count = $9, \
                       open_count = $10, reopened_count = $11, resolved_count = $12, null_keys = $13, \
                       uncovered_count = $14, coverage = $15, slo_recorded = $16, \
                       oldest_open_since = ( \
                         SELECT MIN(CASE WHEN v.status = 'reopened' THEN COALESCE(r.finished_at, $2) \
                                         ELSE v.first_seen END) \
                         FROM violations v LEFT JOIN runs r ON r.id = v.reopened_run_id \
                         WHERE v.invariant = $17 AND v.status <> 'resolved') \
                     WHERE id = $1 AND status = 'running'",
                )
                .bind(run)
                .bind(at)
                .bind(stats.rows_left as i64)
                .bind(stats.rows_right as i64)
                .bind(stats.observed as i64)
                .bind(sqlx::types::Json(&stats.counts))
                .bind(stats.not_yet_due as i64)
                .bind(stats.truncated)
                .bind(change.new as i64)
                .bind(change.still_open as i64)
                .bind(change.reopened as i64)
                .bind(change.resolved as i64)
                .bind(stats.null_keys as i64)
                .bind(change.uncovered as i64)
                .bind(sqlx::types::Json(&stats.coverage))
                .bind(true)
                // For consistency SLOs, in the same statement (no round trip more per run):
                // since when the oldest violation still open has been open — a reopened one
                // since the run that reopened it; this run's own finish time is `at`.
                .bind(invariant.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if completed != 1 {
                    // Dropping the transaction rolls back the ledger changes above.
                    return Err($crate::store::StoreError::NoSuchRun(run));
                }
                tx.commit().await?;
                Ok(change)
            }

            async fn abandon_run(
                &self,
                run: $crate::domain::RunId,
                status: $crate::domain::RunStatus,
                error: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                Self::drop_staged(&mut tx, run).await?;
                sqlx::query(
                    "UPDATE runs SET status = $2, finished_at = $3, error = $4 WHERE id = $1 AND status = 'running'",
                )
                .bind(run)
                .bind(status.as_str())
                .bind(at)
                .bind(error)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn event_span(
                &self,
                filter: &$crate::store::ViolationFilter,
            ) -> Result<
                Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
                $crate::store::StoreError,
            > {
                let unpaged = $crate::store::ViolationFilter {
                    after_id: None,
                    ..filter.clone()
                };
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT MIN(event_at), MAX(event_at) FROM violations WHERE event_at IS NOT NULL",
                );
                Self::push_filter(&mut qb, &unpaged);
                let (first, last): (
                    Option<chrono::DateTime<chrono::Utc>>,
                    Option<chrono::DateTime<chrono::Utc>>,
                ) = qb.build_query_as().fetch_one(&self.pool).await?;
                Ok(first.zip(last))
            }

            async fn event_times(
                &self,
                filter: &$crate::store::ViolationFilter,
            ) -> Result<Vec<chrono::DateTime<chrono::Utc>>, $crate::store::StoreError> {
                let mut out = Vec::new();
                let mut after = 0_i64;
                loop {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "SELECT id, event_at FROM violations WHERE event_at IS NOT NULL",
                    );
                    let unpaged = $crate::store::ViolationFilter {
                        after_id: None,
                        ..filter.clone()
                    };
                    Self::push_filter(&mut qb, &unpaged);
                    qb.push(" AND id > ").push_bind(after);
                    qb.push(" ORDER BY id LIMIT 10000");
                    let page: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
                        qb.build_query_as().fetch_all(&self.pool).await?;
                    let Some(&(last, _)) = page.last() else { break };
                    after = last;
                    out.extend(page.into_iter().map(|(_, t)| t));
                }
                Ok(out)
            }

            async fn violations(
                &self,
                filter: &$crate::store::ViolationFilter,
            ) -> Result<Vec<$crate::store::ViolationRecord>, $crate::store::StoreError> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(Self::VIOLATIONS);
                Self::push_filter(&mut qb, filter);
                qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(filter.limit.max(1)));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(Self::violation_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(Into::into)
            }

            async fn runs(
                &self,
                invariant: Option<&str>,
                limit: u32,
            ) -> Result<Vec<$crate::store::RunRecord>, $crate::store::StoreError> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(Self::RUNS);
                if let Some(name) = invariant {
                    qb.push(" AND invariant = ").push_bind(name.to_owned());
                }
                qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit.max(1)));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(Self::run_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(Into::into)
            }

            async fn audit(
                &self,
                actor: &str,
                action: &str,
                target: &str,
                details: &serde_json::Value,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<i64, $crate::store::StoreError> {
                let mut conn = self.pool.acquire().await?;
                Ok(Self::write_audit(&mut conn, at, actor, action, target, details).await?)
            }

            async fn audit_log(
                &self,
                filter: &$crate::store::AuditFilter,
                page: $crate::store::AuditPage,
                limit: u32,
            ) -> Result<Vec<$crate::store::AuditEntry>, $crate::store::StoreError> {
                use $crate::store::AuditPage;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT id, at, actor, action, target, details FROM audit_log WHERE 1 = 1",
                );
                if let Some(t) = &filter.target {
                    qb.push(" AND target = ").push_bind(t.clone());
                }
                if let Some(a) = &filter.actor {
                    qb.push(" AND actor = ").push_bind(a.clone());
                }
                if filter.decisions_only {
                    qb.push(" AND action NOT LIKE 'action.%'");
                }
                match page {
                    AuditPage::After(Some(after)) => {
                        qb.push(" AND id > ").push_bind(after);
                    }
                    AuditPage::Before(Some(before)) => {
                        qb.push(" AND id < ").push_bind(before);
                    }
                    AuditPage::After(None) | AuditPage::Before(None) => {}
                }
                qb.push(match page {
                    AuditPage::After(_) => " ORDER BY id",
                    AuditPage::Before(_) => " ORDER BY id DESC",
                });
                qb.push(" LIMIT ").push_bind(i64::from(limit.max(1)));
                let rows = qb.build().fetch_all(&self.pool).await?;
                Ok(rows
                    .iter()
                    .map(Self::audit_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }

            async fn slo_observations(
                &self,
                invariant: &str,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::SloHistory, $crate::store::StoreError> {
                type Row = (
                    chrono::DateTime<chrono::Utc>,
                    String,
                    Option<chrono::DateTime<chrono::Utc>>,
                );
                let observation = |(at, status, oldest_open_since): Row| {
                    $crate::domain::SloObservation {
                        at,
                        completed: $crate::domain::RunStatus::parse(&status)
                            == $crate::domain::RunStatus::Succeeded,
                        oldest_open_since,
                    }
                };
                // Completed runs recorded before SLOs existed say nothing about them.
                let seed: Option<Row> = sqlx::query_as(
                    "SELECT finished_at, status, oldest_open_since FROM runs \
                     WHERE invariant = $1 AND status = 'succeeded' AND slo_recorded \
                       AND finished_at < $2 \
                     ORDER BY finished_at DESC LIMIT 1",
                )
                .bind(invariant)
                .bind(from)
                .fetch_optional(&self.pool)
                .await?;
                let runs: Vec<Row> = sqlx::query_as(
                    "SELECT finished_at, status, oldest_open_since FROM runs \
                     WHERE invariant = $1 AND finished_at >= $2 AND finished_at < $3 \
                       AND ((status = 'succeeded' AND slo_recorded) OR status = 'failed') \
                     ORDER BY finished_at, id",
                )
                .bind(invariant)
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
                Ok($crate::store::SloHistory {
                    seed: seed.map(observation),
                    runs: runs.into_iter().map(observation).collect(),
                })
            }

            async fn last_audit(
                &self,
                target: &str,
                action: &str,
            ) -> Result<Option<$crate::store::AuditEntry>, $crate::store::StoreError> {
                let row = sqlx::query(
                    "SELECT id, at, actor, action, target, details FROM audit_log \
                     WHERE target = $1 AND action = $2 ORDER BY id DESC LIMIT 1",
                )
                .bind(target)
                .bind(action)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(Self::audit_row).transpose()?)
            }

            async fn audit_trail(
                &self,
                targets: &[String],
                since: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::store::AuditEntry>, $crate::store::StoreError> {
                if targets.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT id, at, actor, action, target, details FROM audit_log WHERE target IN (",
                );
                let mut sep = qb.separated(", ");
                for t in targets {
                    sep.push_bind(t.as_str());
                }
                qb.push(") AND action NOT LIKE 'action.%' AND at >= ")
                    .push_bind(since)
                    .push(" ORDER BY id LIMIT ")
                    .push_bind(i64::from(limit.max(1)));
                let rows = qb.build().fetch_all(&self.pool).await?;
                Ok(rows
                    .iter()
                    .map(Self::audit_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }

            async fn violation_groups(
                &self,
                filter: &$crate::store::ViolationFilter,
            ) -> Result<Vec<$crate::store::ViolationGroup>, $crate::store::StoreError> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT invariant, kind, status, COUNT(*) AS n, MIN(first_seen) AS first_seen, \
                            MAX(last_seen) AS last_seen, MIN(event_at) AS event_from, MAX(event_at) AS event_to \
                     FROM violations WHERE 1 = 1",
                );
                let unpaged = $crate::store::ViolationFilter {
                    after_id: None,
                    ..filter.clone()
                };
                Self::push_filter(&mut qb, &unpaged);
                qb.push(" GROUP BY invariant, kind, status ORDER BY invariant, kind, status");
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        use sqlx::Row;
                        let status: String = row.try_get("status")?;
                        Ok($crate::store::ViolationGroup {
                            invariant: row.try_get("invariant")?,
                            kind: row.try_get("kind")?,
                            status: $crate::domain::ViolationStatus::parse(&status),
                            count: row.try_get::<i64, _>("n")?.max(0) as u64,
                            first_seen: row.try_get("first_seen")?,
                            last_seen: row.try_get("last_seen")?,
                            event_from: row.try_get("event_from")?,
                            event_to: row.try_get("event_to")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(Into::into)
            }

            async fn open_keys(
                &self,
                invariant: &str,
                limit: u32,
            ) -> Result<Vec<serde_json::Value>, $crate::store::StoreError> {
                use sqlx::Row as _;
                // The earliest recorded first (the same ones each run, where there are more).
                let rows = sqlx::QueryBuilder::<$db>::new(
                    "SELECT key FROM violations WHERE invariant = ",
                )
                .push_bind(invariant)
                .push(" AND status IN ('open', 'reopened') GROUP BY key ORDER BY min(id) LIMIT ")
                .push_bind(i64::from(limit))
                .build()
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        row.try_get::<sqlx::types::Json<serde_json::Value>, _>("key")
                            .map(|k| k.0)
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(Into::into)
            }

            async fn latest_full_run(
                &self,
                invariant: &str,
            ) -> Result<Option<$crate::store::RunRecord>, $crate::store::StoreError> {
                // An incremental run's coverage is `{"pass": "changed", ...}` (JSON text on
                // SQLite, jsonb on PostgreSQL; its other members hold no such string); runs
                // recorded before coverage was kept read everything.
                Ok(sqlx::QueryBuilder::<$db>::new(Self::RUNS)
                    .push(" AND invariant = ")
                    .push_bind(invariant)
                    .push(" AND status = 'succeeded' AND truncated = ")
                    .push_bind(false)
                    .push(
                        " AND COALESCE(CAST(coverage AS TEXT), '') NOT LIKE '%\"changed\"%' \
                         ORDER BY id DESC LIMIT 1",
                    )
                    .build()
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(Self::run_row)
                    .transpose()?)
            }

            async fn run_digest(
                &self,
                invariant: &str,
                since: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<$crate::store::RunDigest, $crate::store::StoreError> {
                let (total, failed): (i64, Option<i64>) = sqlx::query_as(
                    "SELECT COUNT(*), SUM(CASE WHEN status IN ('failed', 'cancelled') THEN 1 ELSE 0 END) \
                     FROM runs WHERE invariant = $1 AND started_at >= $2",
                )
                .bind(invariant)
                .bind(since)
                .fetch_one(&self.pool)
                .await?;
                let mut qb = sqlx::QueryBuilder::<$db>::new(Self::RUNS);
                qb.push(" AND invariant = ")
                    .push_bind(invariant)
                    .push(" AND started_at >= ")
                    .push_bind(since)
                    .push(
                        " AND (status <> 'succeeded' OR new_count + reopened_count + resolved_count > 0) \
                         ORDER BY id LIMIT ",
                    )
                    .push_bind(i64::from(limit.max(1)));
                let notable = qb
                    .build()
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(Self::run_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let latest = sqlx::QueryBuilder::<$db>::new(Self::RUNS)
                    .push(" AND invariant = ")
                    .push_bind(invariant)
                    .push(" AND status <> 'running' ORDER BY id DESC LIMIT 1")
                    .build()
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(Self::run_row)
                    .transpose()?;
                let latest_full =
                    <Self as $crate::store::Store>::latest_full_run(self, invariant).await?;
                Ok($crate::store::RunDigest {
                    total: total.max(0) as u64,
                    failed: failed.unwrap_or(0).max(0) as u64,
                    notable,
                    latest,
                    latest_full,
                })
            }

            async fn close(&self) {
                // Bounded: a connection released as its network stalled must not hold the
                // process's exit (see `connect::close_within`).
                crate::connect::close_within(&self.pool, std::time::Duration::from_secs(5), "the store")
                    .await;
            }
        }
    };
}

pub(crate) use impl_store;
