//! HTTP targets: one client per target, requests kept under its `base_url` and (unless
//! allowed) off internal networks, each carrying the action's `Idempotency-Key`.

use std::collections::BTreeMap;

use super::{Executed, TargetError};
use crate::config::HttpTarget;
use crate::net::{self, guard};

pub(super) struct HttpConn {
    pub(super) cfg: HttpTarget,
    pub(super) client: reqwest::Client,
}

pub(super) fn http_client(cfg: &HttpTarget) -> Result<reqwest::Client, TargetError> {
    net::guarded_client(
        &cfg.base_url,
        cfg.timeout.as_std(),
        !cfg.allow_private_network,
    )
    .map_err(|e| TargetError::HttpClient {
        target: cfg.name.to_string(),
        message: e.to_string(),
    })
}

impl HttpConn {
    pub(super) async fn execute(
        &self,
        method: &str,
        url: &str,
        headers: &BTreeMap<String, String>,
        body: Option<&serde_json::Value>,
        idempotency_key: &str,
    ) -> Executed {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Executed::Failed(TargetError::NotAUrl(url.to_owned()));
        };
        if !parsed.as_str().starts_with(&self.cfg.base_url) {
            return Executed::Failed(TargetError::OutsideBase {
                url: parsed.to_string(),
                target: self.cfg.name.to_string(),
                base_url: self.cfg.base_url.clone(),
            });
        }
        if !self.cfg.allow_private_network
            && let Err(e) = guard::check_url(&parsed)
        {
            return Executed::Failed(TargetError::Refused(e.to_string()));
        }
        let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
            return Executed::Failed(TargetError::NotAMethod(method.to_owned()));
        };
        let mut request = self.client.request(method, parsed);
        for (name, value) in &self.cfg.headers {
            request = request.header(name, secrecy::ExposeSecret::expose_secret(value));
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request = request.header("Idempotency-Key", idempotency_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Executed::Applied(serde_json::json!({ "http_status": status.as_u16() }))
                } else {
                    let retry_after = matches!(status.as_u16(), 429 | 503)
                        .then(|| crate::net::retry_after(response.headers()))
                        .flatten()
                        .and_then(Result::ok);
                    let text = response.text().await.unwrap_or_default();
                    let excerpt: String = text.chars().take(300).collect();
                    Executed::Failed(TargetError::Status {
                        status: status.to_string(),
                        excerpt,
                        retry_after,
                    })
                }
            }
            Err(e) => {
                let msg = net::error_chain(&e);
                Executed::Failed(TargetError::Request(msg))
            }
        }
    }
}
