//! Web console sessions: a signed-in token's session, kept by the SHA-256 of its id, with the
//! CSRF token its forms must carry. Sign-in and sign-out are audited in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_name: String,
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Records a new session (and drops expired ones).
    async fn create_session(
        &self,
        id_sha256: &str,
        session: &SessionRecord,
    ) -> Result<(), StoreError>;

    /// The session, if it exists and has not expired at `now`.
    async fn session(
        &self,
        id_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// Ends a session (signing out); `false` if there was none.
    async fn end_session(&self, id_sha256: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;
}

macro_rules! impl_session_store {
    ($store:ty, $begin:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::SessionStore for $store {
            async fn create_session(
                &self,
                id_sha256: &str,
                session: &$crate::store::SessionRecord,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                sqlx::query("DELETE FROM console_sessions WHERE expires_at < $1")
                    .bind(session.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO console_sessions (id_sha256, token_name, csrf, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id_sha256)
                .bind(&session.token_name)
                .bind(&session.csrf)
                .bind(session.created_at)
                .bind(session.expires_at)
                .execute(&mut *tx)
                .await?;
                Self::write_audit(
                    &mut tx,
                    session.created_at,
                    &session.token_name,
                    "console.sign_in",
                    "console",
                    &serde_json::json!({ "expires_at": session.expires_at }),
                )
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn session(
                &self,
                id_sha256: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<$crate::store::SessionRecord>, $crate::store::StoreError> {
                let row: Option<(String, String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
                    sqlx::query_as(
                        "SELECT token_name, csrf, created_at, expires_at FROM console_sessions \
                         WHERE id_sha256 = $1 AND expires_at > $2",
                    )
                    .bind(id_sha256)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|(token_name, csrf, created_at, expires_at)| {
                    $crate::store::SessionRecord {
                        token_name,
                        csrf,
                        created_at,
                        expires_at,
                    }
                }))
            }

            async fn end_session(
                &self,
                id_sha256: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let name: Option<String> = sqlx::query_scalar(
                    "DELETE FROM console_sessions WHERE id_sha256 = $1 RETURNING token_name",
                )
                .bind(id_sha256)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(name) = name else {
                    return Ok(false);
                };
                Self::write_audit(&mut tx, at, &name, "console.sign_out", "console", &serde_json::json!({}))
                    .await?;
                tx.commit().await?;
                Ok(true)
            }
        }
    };
}

pub(super) use impl_session_store;
