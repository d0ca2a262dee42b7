//! Redis targets: each action appends one entry to a stream (`XADD`). One Lua script, which
//! Redis runs atomically, looks for the action's idempotency key in the target's marker hash,
//! and only when it is absent adds the entry and records the key with the entry's id. A
//! retried or resumed action finds its marker and adds nothing.

use std::collections::BTreeMap;

use super::{Executed, TargetError};
use crate::config::RedisTarget;

/// KEYS[1] the stream, KEYS[2] the marker hash; ARGV[1] the idempotency key, then field,
/// value pairs. Returns {1, id} when it added the entry, {0, id} when the key was there.
const XADD_ONCE: &str = r"
local done = redis.call('HGET', KEYS[2], ARGV[1])
if done then return {0, done} end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('HSET', KEYS[2], ARGV[1], id)
return {1, id}
";

pub(super) struct RedisConn {
    cfg: RedisTarget,
    /// Made on first use, and again after it broke.
    connection: crate::net::Reconnecting<redis::aio::MultiplexedConnection>,
    script: redis::Script,
}

impl RedisConn {
    pub(super) fn open(cfg: &RedisTarget) -> Self {
        Self {
            cfg: cfg.clone(),
            connection: crate::net::Reconnecting::default(),
            script: redis::Script::new(XADD_ONCE),
        }
    }

    fn failed(&self, message: String) -> TargetError {
        TargetError::Server {
            target: self.cfg.name.to_string(),
            message,
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, TargetError> {
        self.connection
            .get(|| async {
                crate::net::redis_connect(self.cfg.url.expose(), self.cfg.timeout.as_std())
                    .await
                    .map_err(|m| {
                        TargetError::Unreachable(format!(
                            "target `{}`: cannot connect to {}: {m}",
                            self.cfg.name, self.cfg.url
                        ))
                    })
            })
            .await
    }

    /// `e`, after dropping the connection if `e` says it is gone.
    async fn broke(&self, e: redis::RedisError) -> redis::RedisError {
        if crate::net::redis_broken(&e) {
            self.connection.forget().await;
        }
        e
    }

    /// Why an action with a marker counts as applied.
    pub(super) fn marker_says(&self) -> String {
        format!(
            "the target's marker hash `{}` records it as applied",
            self.cfg.marker_key
        )
    }

    pub(super) async fn execute(
        &self,
        stream: &str,
        fields: &BTreeMap<String, String>,
        idempotency_key: &str,
    ) -> Executed {
        let mut connection = match self.connection().await {
            Ok(c) => c,
            Err(e) => return Executed::Failed(e),
        };
        let mut invocation = self.script.key(stream);
        invocation.key(&self.cfg.marker_key).arg(idempotency_key);
        for (name, value) in fields {
            invocation.arg(name).arg(value);
        }
        match invocation
            .invoke_async::<(i64, String)>(&mut connection)
            .await
        {
            Ok((1, id)) => Executed::Applied(serde_json::json!({ "stream": stream, "id": id })),
            Ok(_) => Executed::AlreadyApplied(self.marker_says()),
            Err(e) => {
                let e = self.broke(e).await;
                Executed::Failed(self.failed(format!(
                    "XADD to `{stream}`: {}",
                    crate::net::error_chain(&e)
                )))
            }
        }
    }

    /// Whether the marker hash holds this action's key.
    pub(super) async fn has_marker(&self, idempotency_key: &str) -> Result<bool, TargetError> {
        let mut connection = self.connection().await?;
        match redis::cmd("HEXISTS")
            .arg(&self.cfg.marker_key)
            .arg(idempotency_key)
            .query_async::<bool>(&mut connection)
            .await
        {
            Ok(found) => Ok(found),
            Err(e) => Err(TargetError::MarkerRead {
                marker: format!("hash `{}`", self.cfg.marker_key),
                message: crate::net::error_chain(&self.broke(e).await),
            }),
        }
    }
}
