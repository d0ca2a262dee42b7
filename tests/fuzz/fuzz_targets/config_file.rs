//! A `trueup.yaml`, as bytes: parsing it never panics, and a secret from the environment never
//! appears in what a parsed config or its problems print.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-canary-0f3a9c";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |_: &str| Some(SECRET.to_owned());
    let parsed = trueup::config::Config::parse(text, Path::new("trueup.yaml"), &env);
    // A file that holds the canary itself may see it quoted back (a key name, say): that is
    // the file's own text, not the environment's secret.
    if text.contains(SECRET) {
        return;
    }
    match parsed {
        Ok(config) => {
            let shown = format!("{config:?}");
            assert!(!shown.contains(SECRET), "a secret printed: {shown}");
        }
        Err(problems) => {
            let shown = problems.to_string();
            assert!(!shown.contains(SECRET), "a secret printed: {shown}");
        }
    }
});
