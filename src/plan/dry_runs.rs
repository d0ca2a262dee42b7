//! The record of dry runs: each one is written to the audit log with the content hash it
//! covered, so a plan's page can show its last dry run after a reload, on any replica, and
//! offer the live apply only once this exact content has been dry-run. A replay window's dry
//! run (before its plan exists) counts for the plan proposed from it when their contents are
//! the same: proposing the window just dry-run does not ask for a second one.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

use super::apply::ApplyReport;
use super::replay::{DryRun, Window};
use crate::domain::{Actor, PlanId};
use crate::store::{AuditEntry, PlanRecord, Store, StoreError};

/// The audit action of a plan's dry run (its own, or a window's carried over to it).
pub const PLAN_DRY_RUN: &str = "plan.dry_run";
/// The audit action of a replay window's dry run.
pub const WINDOW_DRY_RUN: &str = "replay.dry_run";
/// How recent a window's dry run must be to count for the plan proposed from it.
pub const WINDOW_DRY_RUN_FRESH: TimeDelta = TimeDelta::hours(1);

/// A plan's last dry run, as a reviewer reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DryRunRecord {
    pub at: DateTime<Utc>,
    pub by: String,
    /// What would happen to the plan's actions, by outcome (`would_apply`, ...).
    pub counts: BTreeMap<String, u64>,
    /// Why the dry run stopped short, if it did.
    pub stopped: Option<String>,
    /// Dry-run as a replay window on the replay page, before the plan existed.
    pub of_window: bool,
}

/// Records a plan's own dry run.
pub async fn record_plan(
    store: &dyn Store,
    actor: &Actor,
    plan: &PlanRecord,
    report: &ApplyReport,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let counts: BTreeMap<&str, u64> = report
        .counts
        .iter()
        .map(|(o, n)| (o.as_str(), *n))
        .collect();
    store
        .audit(
            &actor.name,
            PLAN_DRY_RUN,
            &format!("plan:{}", plan.id),
            &serde_json::json!({
                "content_hash": plan.content_hash,
                "counts": counts,
                "stopped": report.stopped,
            }),
            at,
        )
        .await?;
    Ok(())
}

/// Records a replay window's dry run with the content hash the plan proposed from it would
/// have (none when it would replay nothing).
pub async fn record_window(
    store: &dyn Store,
    actor: &Actor,
    invariant: &str,
    window: Window,
    content_hash: Option<&str>,
    dry: &DryRun,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    store
        .audit(
            &actor.name,
            WINDOW_DRY_RUN,
            &format!("invariant:{invariant}"),
            &serde_json::json!({
                "from": window.from,
                "to": window.to,
                "content_hash": content_hash,
                "would_replay": dry.would_replay,
                "would_skip_processed": dry.would_skip_processed,
                "parked": dry.parked,
                "outside_window": dry.outside_window,
            }),
            at,
        )
        .await?;
    Ok(())
}

/// Records, for a plan just proposed, the dry run of its window if the latest one of the
/// invariant covered exactly this content and is fresh. Whether it did.
pub async fn carry_window(
    store: &dyn Store,
    invariant: &str,
    plan: PlanId,
    content_hash: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let Some(entry) = store
        .last_audit(&format!("invariant:{invariant}"), WINDOW_DRY_RUN)
        .await?
    else {
        return Ok(false);
    };
    let d = &entry.details;
    if d["content_hash"].as_str() != Some(content_hash) || now - entry.at > WINDOW_DRY_RUN_FRESH {
        return Ok(false);
    }
    // In a plan's terms: an event replayed is an action applied; one processed downstream
    // already is a violation that no longer holds.
    let count = |k: &str| d[k].as_u64().unwrap_or(0);
    store
        .audit(
            &entry.actor,
            PLAN_DRY_RUN,
            &format!("plan:{plan}"),
            &serde_json::json!({
                "content_hash": content_hash,
                "counts": {
                    "would_apply": count("would_replay"),
                    "would_skip_resolved": count("would_skip_processed"),
                },
                "stopped": null,
                "of_window": entry.id,
                "dry_run_at": entry.at,
            }),
            now,
        )
        .await?;
    Ok(true)
}

/// The plan's last dry run, if it was of `content_hash` (the plan's content now).
pub async fn last(
    store: &dyn Store,
    plan: PlanId,
    content_hash: &str,
) -> Result<Option<DryRunRecord>, StoreError> {
    let Some(entry) = store
        .last_audit(&format!("plan:{plan}"), PLAN_DRY_RUN)
        .await?
    else {
        return Ok(None);
    };
    Ok(read(&entry).filter(|_| entry.details["content_hash"].as_str() == Some(content_hash)))
}

fn read(entry: &AuditEntry) -> Option<DryRunRecord> {
    let d = &entry.details;
    let counts = d["counts"]
        .as_object()?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect();
    let of_window = d["of_window"].is_i64();
    let at = match d["dry_run_at"].as_str() {
        Some(t) => t.parse().ok()?,
        None => entry.at,
    };
    Some(DryRunRecord {
        at,
        by: entry.actor.clone(),
        counts,
        stopped: d["stopped"].as_str().map(str::to_owned),
        of_window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> (tempfile::TempDir, std::sync::Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("trueup.db").display());
        let store = crate::store::open(&crate::config::SecretUrl::new(url))
            .await
            .unwrap();
        (dir, store)
    }

    fn window_dry_run(would_replay: u64, processed: u64) -> DryRun {
        DryRun {
            would_replay,
            would_skip_processed: processed,
            ..DryRun::default()
        }
    }

    fn window() -> Window {
        Window {
            from: "2026-11-25T02:00:00Z".parse().unwrap(),
            to: "2026-11-25T08:00:00Z".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_windows_dry_run_counts_for_the_plan_proposed_from_it_only_for_the_same_content_and_within_the_hour()
     {
        let (_dir, store) = sqlite().await;
        let store = store.as_ref();
        let april = Actor {
            name: "april".into(),
            role: crate::domain::Role::Operator,
        };
        let now = Utc::now();
        let dry_at = now - TimeDelta::minutes(10);
        record_window(
            store,
            &april,
            "billed",
            window(),
            Some("H1"),
            &window_dry_run(5957, 3),
            dry_at,
        )
        .await
        .unwrap();
        // Another content (the window, the reason or the events changed): not carried.
        assert!(!carry_window(store, "billed", 1, "H2", now).await.unwrap());
        assert_eq!(last(store, 1, "H2").await.unwrap(), None);
        // The same content: the plan has its dry run, as the window's, with its counts.
        assert!(carry_window(store, "billed", 2, "H1", now).await.unwrap());
        let carried = last(store, 2, "H1").await.unwrap().unwrap();
        assert!(carried.of_window);
        assert_eq!(carried.by, "april");
        assert_eq!(carried.at.timestamp(), dry_at.timestamp());
        assert_eq!(
            carried.counts,
            BTreeMap::from([
                ("would_apply".into(), 5957),
                ("would_skip_resolved".into(), 3)
            ])
        );
        // Another invariant's dry run is not this one's.
        assert!(!carry_window(store, "other", 3, "H1", now).await.unwrap());
        // More than an hour old: not carried.
        assert!(
            !carry_window(
                store,
                "billed",
                4,
                "H1",
                dry_at + WINDOW_DRY_RUN_FRESH + TimeDelta::seconds(1)
            )
            .await
            .unwrap()
        );
        // A window that would replay nothing has no content to carry.
        record_window(
            store,
            &april,
            "billed",
            window(),
            None,
            &window_dry_run(0, 9),
            now,
        )
        .await
        .unwrap();
        assert!(!carry_window(store, "billed", 5, "H1", now).await.unwrap());
    }

    #[tokio::test]
    async fn a_plans_last_dry_run_is_its_own_latest_and_only_of_its_content_now() {
        let (_dir, store) = sqlite().await;
        let store = store.as_ref();
        assert_eq!(last(store, 7, "H").await.unwrap(), None);
        for (actor, hash, n) in [("otto", "OLD", 1), ("ada", "H", 2)] {
            store
                .audit(
                    actor,
                    PLAN_DRY_RUN,
                    "plan:7",
                    &serde_json::json!({"content_hash": hash, "counts": {"would_apply": n}, "stopped": null}),
                    Utc::now(),
                )
                .await
                .unwrap();
        }
        let got = last(store, 7, "H").await.unwrap().unwrap();
        assert_eq!((got.by.as_str(), got.of_window), ("ada", false));
        assert_eq!(got.counts, BTreeMap::from([("would_apply".into(), 2)]));
        // A dry run of content the plan no longer has does not count.
        assert_eq!(last(store, 7, "OLD").await.unwrap(), None);
    }
}
