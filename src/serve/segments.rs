//! Every replica works on split runs' segments, whichever replica began the run: it claims
//! one at a time, for the definitions it holds itself (a replica whose invariant files differ
//! leaves the segment to one that has the run's definition).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::domain::{Invariant, InvariantSpec};
use crate::runner::work_segment;
use crate::runtime::Runtime;

/// How often an idle replica looks for a segment to claim.
const POLL: Duration = Duration::from_millis(500);

/// Claims and evaluates segments until `stop`; a segment in flight then runs on until the
/// runs in flight are cancelled (`Runtime::cancel_runs`), when its lease is left to run out.
pub async fn work_shared_segments(runtime: Runtime, stop: CancellationToken) {
    let worker = runtime.segment_worker();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let split: Vec<(String, Arc<Invariant>)> = runtime
            .catalog
            .snapshot()
            .into_iter()
            .filter(|i| matches!(&i.spec, InvariantSpec::Reconcile(r) if r.segments.is_some()))
            .map(|i| (i.definition_hash(), i))
            .collect();
        let mut worked = false;
        if !split.is_empty() {
            let definitions: Vec<String> = split.iter().map(|(d, _)| d.clone()).collect();
            let now = Utc::now();
            let lease_until = now
                + chrono::TimeDelta::from_std(worker.lease)
                    .unwrap_or(chrono::TimeDelta::seconds(30));
            match runtime
                .store
                .claim_segment(&worker.owner, None, &definitions, now, lease_until)
                .await
            {
                Ok(Some(claim)) => {
                    if let Some((_, invariant)) = split.iter().find(|(d, _)| *d == claim.definition)
                    {
                        if let Err(e) = work_segment(
                            claim,
                            invariant,
                            &runtime.sources,
                            runtime.store.as_ref(),
                            &worker,
                            Some(&runtime.cancel_runs),
                        )
                        .await
                        {
                            tracing::warn!("cannot record a segment: {e}");
                        }
                        worked = true;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot claim a segment: {e}"),
            }
        }
        if !worked {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
