use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::SecretUrl;

use super::StoreError;

/// The production store; several replicas can share it.
pub struct PgStore {
    pub(super) pool: PgPool,
}

impl PgStore {
    pub async fn open(url: &SecretUrl) -> Result<Self, StoreError> {
        let open_err = |e: sqlx::Error| StoreError::Open {
            url: url.redacted(),
            message: e.to_string(),
        };
        let opts = PgConnectOptions::from_str(url.expose())
            .map_err(open_err)?
            .application_name("trueup-store");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(15))
            .connect_lazy_with(opts);
        // Fails at once, with the cause, when the server cannot be reached.
        crate::connect::acquire(&pool, &crate::connect::endpoint(url.expose()))
            .await
            .map_err(|e| StoreError::Open {
                url: url.redacted(),
                message: e.to_string(),
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate {
                url: url.redacted(),
                message: e.to_string(),
            })?;
        Ok(Self { pool })
    }
}

super::sessions::impl_session_store!(PgStore, "BEGIN");

super::incidents::impl_incident_store!(PgStore, sqlx::Postgres, "BEGIN");

super::actions::impl_action_store!(
    PgStore,
    sqlx::Postgres,
    "BEGIN",
    "FOR UPDATE SKIP LOCKED",
    "FOR UPDATE",
    "FOR KEY SHARE"
);

super::plans::impl_plan_store!(
    PgStore,
    sqlx::Postgres,
    "BEGIN",
    "FOR UPDATE SKIP LOCKED",
    "FOR UPDATE"
);

super::ledger::impl_store!(
    PgStore,
    sqlx::Postgres,
    "postgres",
    "BEGIN",
    "FOR UPDATE SKIP LOCKED",
    true
);

super::replicas::impl_replica_store!(
    PgStore,
    sqlx::Postgres,
    "postgres",
    "BEGIN",
    "FOR UPDATE SKIP LOCKED",
    true
);

super::notices::impl_notice_store!(PgStore, sqlx::Postgres, "BEGIN");

super::alerts::impl_alert_store!(
    PgStore,
    sqlx::Postgres,
    "postgres",
    "BEGIN",
    "FOR UPDATE SKIP LOCKED",
    true
);

super::segments::impl_segment_store!(
    PgStore,
    sqlx::Postgres,
    "postgres",
    "BEGIN",
    "FOR UPDATE SKIP LOCKED",
    true
);

super::logs::impl_event_log_store!(PgStore, sqlx::Postgres, "BEGIN", true);
super::logs::impl_log_reader!(PgStore);
super::outcomes::impl_outcome_store!(PgStore, sqlx::Postgres, "BEGIN");
super::trace::impl_trace_store!(PgStore);
