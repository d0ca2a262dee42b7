//! HTTP targets: one client per target, requests kept under its `base_url` and (unless
//! allowed) off internal networks, each carrying the action's `Idempotency-Key`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Executed, TargetError};
use crate::config::HttpTarget;
use crate::plan::netguard;

pub(super) struct HttpConn {
    pub(super) cfg: HttpTarget,
    pub(super) client: reqwest::Client,
}

pub(super) fn http_client(cfg: &HttpTarget) -> Result<reqwest::Client, TargetError> {
    let base = cfg.base_url.clone();
    let guarded = !cfg.allow_private_network;
    // Follow a few redirects, only under the base URL and (unless allowed) to public addresses.
    let redirects =
        reqwest::redirect::Policy::custom(move |attempt| {
            match netguard::check_redirect(attempt.url(), attempt.previous().len(), &base, guarded)
            {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(why),
            }
        });
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(cfg.timeout.as_std())
        .redirect(redirects)
        .user_agent(concat!("trueup/", env!("CARGO_PKG_VERSION")));
    if guarded {
        builder = builder.dns_resolver(Arc::new(netguard::GuardedResolver));
    }
    builder.build().map_err(|e| TargetError::HttpClient {
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
            && let Err(e) = netguard::check_url(&parsed)
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
                    let text = response.text().await.unwrap_or_default();
                    let excerpt: String = text.chars().take(300).collect();
                    Executed::Failed(TargetError::Status {
                        status: status.to_string(),
                        excerpt,
                    })
                }
            }
            Err(e) => {
                // The guard's refusal is the most useful part of a connect error.
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg = format!("{msg}: {s}");
                    source = s.source();
                }
                Executed::Failed(TargetError::Request(msg))
            }
        }
    }
}
