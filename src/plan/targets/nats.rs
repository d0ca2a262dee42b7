//! NATS targets: each action is one message published to a subject of the target's JetStream
//! stream, carrying the action's idempotency key as `Nats-Msg-Id`. The server keeps the ids
//! it saw within the stream's duplicate window and acknowledges a repeat as a duplicate
//! without storing it again: that is how a retried or resumed action lands once.

use std::collections::BTreeMap;

use async_nats::jetstream::context::PublishErrorKind;

use super::{Executed, TargetError};
use crate::config::NatsTarget;

pub(super) struct NatsConn {
    cfg: NatsTarget,
    /// Connected on first use, once the stream is known to exist.
    jetstream: tokio::sync::OnceCell<Stream>,
}

struct Stream {
    context: async_nats::jetstream::Context,
    duplicate_window: std::time::Duration,
}

impl NatsConn {
    pub(super) fn open(cfg: &NatsTarget) -> Self {
        Self {
            cfg: cfg.clone(),
            jetstream: tokio::sync::OnceCell::new(),
        }
    }

    fn failed(&self, message: String) -> TargetError {
        TargetError::Server {
            target: self.cfg.name.to_string(),
            message,
        }
    }

    async fn stream(&self) -> Result<&Stream, TargetError> {
        self.jetstream
            .get_or_try_init(|| async {
                let timeout = self.cfg.timeout.as_std();
                let client = crate::net::nats_connect(self.cfg.url.expose(), timeout)
                    .await
                    .map_err(|m| {
                        TargetError::Unreachable(format!(
                            "target `{}`: cannot connect to {}: {m}",
                            self.cfg.name, self.cfg.url
                        ))
                    })?;
                let context = async_nats::jetstream::new(client);
                let stream = context.get_stream(&self.cfg.stream).await.map_err(|e| {
                    self.failed(format!(
                        "cannot find stream `{}`: {}; create it (e.g. `nats stream add {}`) with subjects covering what the actions publish",
                        self.cfg.stream,
                        crate::net::error_chain(&e),
                        self.cfg.stream
                    ))
                })?;
                Ok(Stream {
                    duplicate_window: stream.cached_info().config.duplicate_window,
                    context,
                })
            })
            .await
    }

    pub(super) async fn execute(
        &self,
        subject: &str,
        headers: &BTreeMap<String, String>,
        body: &serde_json::Value,
        idempotency_key: &str,
    ) -> Executed {
        let stream = match self.stream().await {
            Ok(s) => s,
            Err(e) => return Executed::Failed(e),
        };
        let mut message_headers = async_nats::HeaderMap::new();
        for (name, value) in headers {
            message_headers.insert(name.as_str(), value.as_str());
        }
        message_headers.insert(async_nats::header::NATS_MESSAGE_ID, idempotency_key);
        // A subject no longer (or never) in this stream is refused by the server, rather than
        // stored in whichever other stream captures it.
        message_headers.insert(
            async_nats::header::NATS_EXPECTED_STREAM,
            self.cfg.stream.as_str(),
        );
        let payload = match serde_json::to_vec(body) {
            Ok(p) => p,
            Err(e) => return Executed::Failed(self.failed(format!("cannot encode the body: {e}"))),
        };
        let timeout = self.cfg.timeout.as_std();
        let published = async {
            stream
                .context
                .publish_with_headers(subject.to_owned(), message_headers, payload.into())
                .await?
                .await
        };
        let ack = match tokio::time::timeout(timeout, published).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => {
                let why = match e.kind() {
                    PublishErrorKind::StreamNotFound => format!(
                        "no stream takes this subject; add it to stream `{}`'s subjects",
                        self.cfg.stream
                    ),
                    _ => crate::net::error_chain(&e),
                };
                return Executed::Failed(self.failed(format!("publish to `{subject}`: {why}")));
            }
            Err(_) => {
                return Executed::Failed(self.failed(format!(
                    "publish to `{subject}`: no ack within {}; the message may be stored, and a retry with the same Nats-Msg-Id is dropped as a duplicate",
                    self.cfg.timeout
                )));
            }
        };
        if ack.duplicate {
            return Executed::AlreadyApplied;
        }
        Executed::Applied(serde_json::json!({
            "stream": ack.stream,
            "sequence": ack.sequence,
            "duplicate_window_secs": stream.duplicate_window.as_secs(),
        }))
    }

    pub(super) async fn close(&self) {
        if let Some(stream) = self.jetstream.get() {
            let _ =
                tokio::time::timeout(self.cfg.timeout.as_std(), stream.context.client().drain())
                    .await;
        }
    }
}
