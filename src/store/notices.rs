//! Notices on their way to the outbox, and silences. A notice waits in its group (a route's
//! `group_wait`, `group_interval`) or is held by a silence; a due group becomes one outbox
//! message in one transaction; when a silence ends, its held notices are settled: re-held by
//! another silence, summarised into one notice per invariant still firing, or dropped.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{OutboxMessage, StoreError};
use crate::domain::{Delivery, NewSilence, Silence};

/// A notice to queue on one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedNotice {
    pub invariant: String,
    /// firing, updated, repeat, resolved
    pub notice: String,
    pub delivery: Delivery,
    pub payload: serde_json::Value,
    /// The active silence that holds it, if one matches.
    pub held_by: Option<i64>,
}

/// A notice in the store that has not gone out.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WaitingNotice {
    pub id: i64,
    pub invariant: String,
    pub notice: String,
    pub channel: String,
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub silenced_by: Option<i64>,
}

/// The notices of one group, due to go out together.
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeGroup {
    pub group_key: String,
    pub channel: String,
    pub group_labels: BTreeMap<String, String>,
    pub notices: Vec<WaitingNotice>,
}

/// What asking to expire a silence did.
#[derive(Debug, Clone, PartialEq)]
pub enum SilenceExpiry {
    Expired(Silence),
    /// It had ended already; nothing changed.
    AlreadyEnded(Silence),
    NotFound,
}

/// How the notices a silence held are settled when it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Release {
    /// (notice, silence): held on by another silence that matches their invariant.
    pub rehold: Vec<(i64, i64)>,
    /// The held notices of an invariant still firing, and the summary that replaces them.
    pub summaries: Vec<(Vec<i64>, QueuedNotice)>,
    /// Held notices of invariants that no longer fire.
    pub dropped: Vec<i64>,
}

#[async_trait]
pub trait NoticeStore: Send + Sync {
    /// Every waiting, unheld notice of each group that has one due at `now`.
    async fn due_notice_groups(&self, now: DateTime<Utc>) -> Result<Vec<NoticeGroup>, StoreError>;

    /// Holds waiting notices under `silence` (one that began after they were queued); audited.
    async fn hold_notices(
        &self,
        notices: &[WaitingNotice],
        silence: i64,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Queues `message` in the outbox for the group's `notices` and marks them sent, in one
    /// transaction. False (and nothing changed) if any of them was settled meanwhile (by
    /// another replica, or a silence).
    async fn send_notice_group(
        &self,
        group_key: &str,
        notices: &[i64],
        message: &OutboxMessage,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Records a silence; audited as `actor`'s.
    async fn create_silence(
        &self,
        silence: &NewSilence,
        actor: &str,
        at: DateTime<Utc>,
    ) -> Result<Silence, StoreError>;

    /// Silences active at `now`, soonest ending first, then (with `ended`) those that ended,
    /// most recent first; at most `limit`.
    async fn silences(
        &self,
        now: DateTime<Utc>,
        ended: bool,
        limit: u32,
    ) -> Result<Vec<Silence>, StoreError>;

    /// Ends a silence now; audited as `actor`'s.
    async fn expire_silence(
        &self,
        id: i64,
        actor: &str,
        at: DateTime<Utc>,
    ) -> Result<SilenceExpiry, StoreError>;

    /// Silences that have ended and whose held notices are not settled yet.
    async fn silences_to_release(&self, now: DateTime<Utc>) -> Result<Vec<Silence>, StoreError>;

    /// The notices `silence` holds.
    async fn held_notices(&self, silence: i64) -> Result<Vec<WaitingNotice>, StoreError>;

    /// Settles an ended silence's held notices as `release` says, in one transaction with
    /// marking it released (audited). False if it had been released already.
    async fn release_silence(
        &self,
        silence: &Silence,
        release: &Release,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

macro_rules! impl_notice_store {
    ($store:ty, $db:ty, $begin:literal) => {
        impl $store {
            /// Queues one notice, due when its group says (see `Delivery::due_at`).
            async fn insert_notice(
                conn: &mut <$db as sqlx::Database>::Connection,
                n: &$crate::store::QueuedNotice,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), sqlx::Error> {
                let last_sent: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
                    "SELECT last_sent_at FROM notice_groups WHERE group_key = $1",
                )
                .bind(&n.delivery.group_key)
                .fetch_optional(&mut *conn)
                .await?;
                // Held only by a silence still active and unreleased: one that ended since the
                // caller looked would never settle it.
                let held: Option<Option<i64>> = sqlx::query_scalar(
                    "INSERT INTO notices (invariant, notice, notice_key, channel, group_key, group_labels, \
                     payload, created_at, due_at, silenced_by) VALUES ($1, $2, $10, $3, $4, $5, $6, $7, $8, \
                     (SELECT id FROM silences WHERE id = $9 AND released_at IS NULL \
                      AND expired_at IS NULL AND ends_at > $7)) \
                     ON CONFLICT (notice_key) DO NOTHING RETURNING silenced_by",
                )
                .bind(&n.invariant)
                .bind(&n.notice)
                .bind(&n.delivery.channel)
                .bind(&n.delivery.group_key)
                .bind(sqlx::types::Json(&n.delivery.group_labels))
                .bind(sqlx::types::Json(&n.payload))
                .bind(at)
                .bind(n.delivery.due_at(at, last_sent))
                .bind(n.held_by)
                .bind(n.payload["dedup_key"].as_str().unwrap_or_default())
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(Some(silence)) = held {
                    Self::audit_held(conn, &n.invariant, &n.notice, &n.delivery.channel, silence, at)
                        .await?;
                }
                Ok(())
            }

            async fn audit_held(
                conn: &mut <$db as sqlx::Database>::Connection,
                invariant: &str,
                notice: &str,
                channel: &str,
                silence: i64,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), sqlx::Error> {
                Self::write_audit(
                    conn,
                    at,
                    "scheduler",
                    "notice.held",
                    &format!("invariant:{invariant}"),
                    &serde_json::json!({"notice": notice, "channel": channel, "silence": silence}),
                )
                .await
                .map(|_| ())
            }

            fn waiting_notice(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::store::WaitingNotice, sqlx::Error> {
                use sqlx::Row;
                let labels: sqlx::types::Json<std::collections::BTreeMap<String, String>> =
                    row.try_get("group_labels")?;
                let payload: sqlx::types::Json<serde_json::Value> = row.try_get("payload")?;
                Ok($crate::store::WaitingNotice {
                    id: row.try_get("id")?,
                    invariant: row.try_get("invariant")?,
                    notice: row.try_get("notice")?,
                    channel: row.try_get("channel")?,
                    group_key: row.try_get("group_key")?,
                    group_labels: labels.0,
                    payload: payload.0,
                    created_at: row.try_get("created_at")?,
                    silenced_by: row.try_get("silenced_by")?,
                })
            }

            /// The silences among `rows`; one whose matchers no longer parse (a change of
            /// the regular expression syntax) is left out with a warning, so that it cannot
            /// stop every notice.
            fn silence_rows(
                rows: &[<$db as sqlx::Database>::Row],
            ) -> Result<Vec<$crate::domain::Silence>, sqlx::Error> {
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    match Self::silence_row(row) {
                        Ok(s) => out.push(s),
                        Err(sqlx::Error::Decode(e)) => {
                            tracing::warn!("a stored silence is left out: its matchers do not parse: {e}")
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }

            fn silence_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::domain::Silence, sqlx::Error> {
                use sqlx::Row;
                let matchers: sqlx::types::Json<Vec<String>> = row.try_get("matchers")?;
                let matchers = matchers
                    .0
                    .iter()
                    .map(|m| $crate::domain::Matcher::parse(m))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| sqlx::Error::Decode(format!("silence matchers: {e}").into()))?;
                Ok($crate::domain::Silence {
                    id: row.try_get("id")?,
                    matchers,
                    reason: row.try_get("reason")?,
                    created_by: row.try_get("created_by")?,
                    created_at: row.try_get("created_at")?,
                    ends_at: row.try_get("ends_at")?,
                    expired_at: row.try_get("expired_at")?,
                    expired_by: row.try_get("expired_by")?,
                })
            }

            /// Settles a held notice; whether it was still unsettled.
            async fn settle_notice(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: i64,
                outcome: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, sqlx::Error> {
                Ok(sqlx::query(
                    "UPDATE notices SET outcome = $2, outcome_at = $3 WHERE id = $1 AND outcome IS NULL",
                )
                .bind(id)
                .bind(outcome)
                .bind(at)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                    == 1)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::NoticeStore for $store {
            async fn due_notice_groups(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::NoticeGroup>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT id, invariant, notice, channel, group_key, group_labels, payload, created_at, silenced_by \
                     FROM notices WHERE outcome IS NULL AND silenced_by IS NULL AND group_key IN ( \
                       SELECT group_key FROM notices \
                       WHERE outcome IS NULL AND silenced_by IS NULL AND due_at <= $1) \
                     ORDER BY group_key, id",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                let mut groups: Vec<$crate::store::NoticeGroup> = Vec::new();
                for row in &rows {
                    let n = Self::waiting_notice(row)?;
                    match groups.last_mut() {
                        Some(g) if g.group_key == n.group_key => g.notices.push(n),
                        _ => groups.push($crate::store::NoticeGroup {
                            group_key: n.group_key.clone(),
                            channel: n.channel.clone(),
                            group_labels: n.group_labels.clone(),
                            notices: vec![n],
                        }),
                    }
                }
                Ok(groups)
            }

            async fn hold_notices(
                &self,
                notices: &[$crate::store::WaitingNotice],
                silence: i64,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                for n in notices {
                    let held = sqlx::query(
                        "UPDATE notices SET silenced_by = $2 WHERE id = $1 AND outcome IS NULL AND silenced_by IS NULL \
                         AND EXISTS (SELECT 1 FROM silences WHERE id = $2 AND released_at IS NULL \
                           AND expired_at IS NULL AND ends_at > $3)",
                    )
                    .bind(n.id)
                    .bind(silence)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if held == 1 {
                        Self::audit_held(&mut tx, &n.invariant, &n.notice, &n.channel, silence, at)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn send_notice_group(
                &self,
                group_key: &str,
                notices: &[i64],
                message: &$crate::store::OutboxMessage,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                for id in notices {
                    let sent = sqlx::query(
                        "UPDATE notices SET outcome = 'sent', outcome_at = $2, dedup_key = $3 \
                         WHERE id = $1 AND outcome IS NULL AND silenced_by IS NULL",
                    )
                    .bind(id)
                    .bind(at)
                    .bind(&message.dedup_key)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if sent != 1 {
                        tx.rollback().await?;
                        return Ok(false);
                    }
                }
                sqlx::query(
                    "INSERT INTO outbox (dedup_key, channel, payload, created_at, next_attempt_at) \
                     VALUES ($1, $2, $3, $4, $4) ON CONFLICT (dedup_key) DO NOTHING",
                )
                .bind(&message.dedup_key)
                .bind(&message.channel)
                .bind(sqlx::types::Json(&message.payload))
                .bind(at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO notice_groups (group_key, last_sent_at) VALUES ($1, $2) \
                     ON CONFLICT (group_key) DO UPDATE SET last_sent_at = excluded.last_sent_at",
                )
                .bind(group_key)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if notices.len() > 1 {
                    // A grouped notice is a decision trueup made for people: say which.
                    Self::write_audit(
                        &mut tx,
                        at,
                        "scheduler",
                        "notice.grouped",
                        &format!("channel:{}", message.channel),
                        &serde_json::json!({
                            "group": group_key,
                            "notices": notices.len(),
                            "invariants": message.payload["invariants"],
                            "dedup_key": message.dedup_key,
                        }),
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn create_silence(
                &self,
                silence: &$crate::domain::NewSilence,
                actor: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::domain::Silence, $crate::store::StoreError> {
                let matchers: Vec<String> =
                    silence.matchers.iter().map(ToString::to_string).collect();
                let mut tx = self.pool.begin_with($begin).await?;
                // The row as stored (times at the backend's precision).
                let row = sqlx::query(
                    "INSERT INTO silences (matchers, reason, created_by, created_at, ends_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     RETURNING id, matchers, reason, created_by, created_at, ends_at, expired_at, expired_by",
                )
                .bind(sqlx::types::Json(&matchers))
                .bind(&silence.reason)
                .bind(actor)
                .bind(at)
                .bind(silence.ends_at)
                .fetch_one(&mut *tx)
                .await?;
                let created = Self::silence_row(&row)?;
                let id = created.id;
                Self::write_audit(
                    &mut tx,
                    at,
                    actor,
                    "silence.create",
                    &format!("silence:{id}"),
                    &serde_json::json!({
                        "matchers": matchers,
                        "reason": silence.reason,
                        "ends_at": silence.ends_at,
                    }),
                )
                .await?;
                tx.commit().await?;
                Ok(created)
            }

            async fn silences(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                ended: bool,
                limit: u32,
            ) -> Result<Vec<$crate::domain::Silence>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT id, matchers, reason, created_by, created_at, ends_at, expired_at, expired_by \
                     FROM silences WHERE $2 OR (ends_at > $1 AND expired_at IS NULL) \
                     ORDER BY CASE WHEN ends_at > $1 AND expired_at IS NULL THEN 0 ELSE 1 END, \
                       CASE WHEN ends_at > $1 AND expired_at IS NULL THEN ends_at END, id DESC \
                     LIMIT $3",
                )
                .bind(now)
                .bind(ended)
                .bind(i64::from(limit.max(1)))
                .fetch_all(&self.pool)
                .await?;
                Ok(Self::silence_rows(&rows)?)
            }

            async fn expire_silence(
                &self,
                id: i64,
                actor: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::SilenceExpiry, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let expired = sqlx::query(
                    "UPDATE silences SET expired_at = $2, expired_by = $3 \
                     WHERE id = $1 AND expired_at IS NULL AND ends_at > $2",
                )
                .bind(id)
                .bind(at)
                .bind(actor)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if expired {
                    Self::write_audit(
                        &mut tx,
                        at,
                        actor,
                        "silence.expire",
                        &format!("silence:{id}"),
                        &serde_json::json!({}),
                    )
                    .await?;
                }
                let row = sqlx::query(
                    "SELECT id, matchers, reason, created_by, created_at, ends_at, expired_at, expired_by \
                     FROM silences WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(match row {
                    None => $crate::store::SilenceExpiry::NotFound,
                    Some(row) if expired => {
                        $crate::store::SilenceExpiry::Expired(Self::silence_row(&row)?)
                    }
                    Some(row) => $crate::store::SilenceExpiry::AlreadyEnded(Self::silence_row(&row)?),
                })
            }

            async fn silences_to_release(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::domain::Silence>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT id, matchers, reason, created_by, created_at, ends_at, expired_at, expired_by \
                     FROM silences WHERE (ends_at <= $1 OR expired_at IS NOT NULL) AND (released_at IS NULL \
                       OR EXISTS (SELECT 1 FROM notices WHERE silenced_by = silences.id AND outcome IS NULL)) \
                     ORDER BY id",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                Ok(Self::silence_rows(&rows)?)
            }

            async fn held_notices(
                &self,
                silence: i64,
            ) -> Result<Vec<$crate::store::WaitingNotice>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT id, invariant, notice, channel, group_key, group_labels, payload, created_at, silenced_by \
                     FROM notices WHERE silenced_by = $1 AND outcome IS NULL ORDER BY id",
                )
                .bind(silence)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(Self::waiting_notice)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }

            async fn release_silence(
                &self,
                silence: &$crate::domain::Silence,
                release: &$crate::store::Release,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let first = sqlx::query(
                    "UPDATE silences SET released_at = $2 WHERE id = $1 AND released_at IS NULL",
                )
                .bind(silence.id)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                // What this pass settled; a silence released before is settled again only for
                // notices it still holds (held late, or left when another silence ended).
                let mut changed = 0_u64;
                for (notice, other) in &release.rehold {
                    changed += sqlx::query(
                        "UPDATE notices SET silenced_by = $2 WHERE id = $1 AND outcome IS NULL \
                         AND EXISTS (SELECT 1 FROM silences WHERE id = $2 AND released_at IS NULL \
                           AND expired_at IS NULL AND ends_at > $3)",
                    )
                    .bind(notice)
                    .bind(other)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                for (held, summary) in &release.summaries {
                    let mut settled = false;
                    for id in held {
                        settled |= Self::settle_notice(&mut tx, *id, "summarised", at).await?;
                    }
                    if settled {
                        Self::insert_notice(&mut tx, summary, at).await?;
                        changed += 1;
                    }
                }
                for id in &release.dropped {
                    changed += u64::from(Self::settle_notice(&mut tx, *id, "dropped", at).await?);
                }
                if !first && changed == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let summarised: std::collections::BTreeSet<&str> = release
                    .summaries
                    .iter()
                    .map(|(_, s)| s.invariant.as_str())
                    .collect();
                Self::write_audit(
                    &mut tx,
                    at,
                    "scheduler",
                    "silence.end",
                    &format!("silence:{}", silence.id),
                    &serde_json::json!({
                        "ended_at": silence.ended_at(),
                        "summarised": summarised,
                        "held_notices_summarised": release.summaries.iter().map(|(h, _)| h.len()).sum::<usize>(),
                        "held_notices_dropped": release.dropped.len(),
                        "held_on_by_other_silences": release.rehold.len(),
                    }),
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            }
        }
    };
}

pub(super) use impl_notice_store;
