use lettre::message::MultiPart;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::ChannelError;
use crate::config::EmailChannel;

pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

impl EmailSender {
    pub fn new(c: &EmailChannel) -> Result<Self, ChannelError> {
        let (scheme, rest) = c
            .smtp
            .split_once("://")
            .ok_or_else(|| ChannelError::BadSmtpAddress(c.smtp.clone()))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| ChannelError::BadPort(c.smtp.clone()))?,
                ),
            ),
            None => (rest, None),
        };
        let builder = match scheme {
            "smtp" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                .port(port.unwrap_or(25)),
            "smtp+starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| ChannelError::Setup(e.to_string()))?
                .port(port.unwrap_or(587)),
            "smtps" => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| ChannelError::Setup(e.to_string()))?
                .port(port.unwrap_or(465)),
            other => return Err(ChannelError::UnknownScheme(other.to_owned())),
        };
        let builder = match (&c.username, &c.password) {
            (Some(u), Some(p)) => builder.credentials(Credentials::new(
                u.clone(),
                secrecy::ExposeSecret::expose_secret(p).to_owned(),
            )),
            _ => builder,
        };
        let parse = |a: &str| {
            a.parse::<lettre::message::Mailbox>()
                .map_err(|e| ChannelError::BadMailbox {
                    address: a.to_owned(),
                    message: e.to_string(),
                })
        };
        Ok(Self {
            transport: builder
                .timeout(Some(std::time::Duration::from_secs(20)))
                .build(),
            from: parse(&c.from)?,
            to: c.to.iter().map(|a| parse(a)).collect::<Result<_, _>>()?,
        })
    }

    pub async fn send(&self, payload: &serde_json::Value) -> Result<(), ChannelError> {
        let (subject, body) = super::text(payload);
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(subject.as_str());
        for to in &self.to {
            message = message.to(to.clone());
        }
        if let Some(key) = payload["dedup_key"].as_str() {
            // Mail clients thread and deduplicate on Message-ID; retries reuse it.
            message = message.message_id(Some(format!(
                "<{}@trueup>",
                key.replace([' ', '<', '>'], "_")
            )));
        }
        let html = super::html::render(&subject, payload)
            .map_err(|e| ChannelError::BuildEmail(format!("the HTML part: {e}")))?;
        // Both parts say the same; a mail client shows the one it can.
        let email = message
            .multipart(MultiPart::alternative_plain_html(body, html))
            .map_err(|e| ChannelError::BuildEmail(e.to_string()))?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| ChannelError::Smtp(e.to_string()))
    }
}
