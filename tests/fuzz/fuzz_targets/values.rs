//! The values inside the files and requests: durations, names, templates, JSON bodies,
//! reviewed hashes, URLs. Each parser refuses or accepts, never panics; a URL's secrets never
//! survive its redaction.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = trueup::domain::HumanDuration::parse(text);
    let _ = trueup::domain::Schedule::parse(text);
    let _ = trueup::domain::InvariantName::parse(text);
    let _ = trueup::domain::SourceName::parse(text);
    let _ = trueup::domain::Template::parse(text);
    let _ = trueup::plan::ReviewedHash::exact(text);
    let _ = trueup::plan::ReviewedHash::prefix(text);
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = trueup::domain::JsonTemplate::parse(&json);
    }
    // A URL with a password: redacted, the password is gone.
    let url = trueup::config::SecretUrl::new(format!("postgres://u:{text}@h/d?password={text}"));
    let shown = url.redacted();
    if !text.is_empty() && !text.contains(['@', '/', '?', '#', '&', '=', ':']) {
        assert_eq!(shown, "postgres://u:***@h/d?password=***");
    }
});
