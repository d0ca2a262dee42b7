use super::ChannelError;
use crate::config::{WebhookChannel, WebhookFormat};

/// How long one delivery attempt may take.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

pub struct WebhookSender {
    client: reqwest::Client,
    url: String,
    format: WebhookFormat,
    routing_key: Option<secrecy::SecretString>,
}

impl WebhookSender {
    pub fn new(c: &WebhookChannel) -> Result<Self, ChannelError> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("trueup/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ChannelError::Setup(e.to_string()))?;
        Ok(Self {
            client,
            url: c.url.expose().to_owned(),
            format: c.format,
            routing_key: c.routing_key.clone(),
        })
    }

    pub async fn send(&self, payload: &serde_json::Value) -> Result<(), ChannelError> {
        let key = payload["dedup_key"].as_str().map(str::to_owned);
        let bodies = match self.format {
            WebhookFormat::Json => vec![(payload.clone(), key)],
            WebhookFormat::Slack => vec![(super::formats::slack(payload), key)],
            WebhookFormat::PagerDuty => super::formats::pagerduty_events(
                payload,
                self.routing_key
                    .as_ref()
                    .map(secrecy::ExposeSecret::expose_secret)
                    .unwrap_or_default(),
            ),
        };
        // A group's events go one after another; a failure sends the whole message again,
        // which PagerDuty's dedup keys make harmless.
        for (body, key) in &bodies {
            self.post(body, key.as_deref()).await?;
        }
        Ok(())
    }

    async fn post(
        &self,
        body: &serde_json::Value,
        dedup_key: Option<&str>,
    ) -> Result<(), ChannelError> {
        let mut request = self.client.post(&self.url).json(body);
        if let Some(key) = dedup_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(|e| {
            // reqwest's message may include the URL, which may hold a secret token.
            let e = e.without_url();
            if e.is_timeout() {
                return ChannelError::WebhookTimeout(TIMEOUT.as_secs());
            }
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                message = format!("{message}: {c}");
                cause = c.source();
            }
            ChannelError::WebhookRequest(message)
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ChannelError::WebhookStatus(status.to_string()))
        }
    }
}
