//! An invariant file, as bytes: parsing it never panics, never overflows the stack, and every
//! problem it reports points inside the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trueup::config::SourceKind;
use trueup::domain::{SourceName, TargetName};
use trueup::rules::{Known, TargetInfo};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let known = Known {
        sources: [
            ("shop", SourceKind::Sqlite),
            ("ledger", SourceKind::Postgres),
            ("orders", SourceKind::MySql),
        ]
        .into_iter()
        .map(|(n, k)| (SourceName::parse(n).unwrap(), k))
        .collect(),
        channels: ["oncall".to_owned()].into(),
        single_connection: Default::default(),
        retained_logs: Default::default(),
        targets: [
            ("writer", TargetInfo::Sql(SourceKind::Postgres)),
            ("billing", TargetInfo::Http),
        ]
        .into_iter()
        .map(|(n, i)| (TargetName::parse(n).unwrap(), i))
        .collect(),
    };
    let (_, problems) = trueup::rules::parse_file(text, Path::new("fuzz.yaml"), &known);
    // YAML breaks lines at LF, CRLF and a lone CR (found by this target: a file of CRs).
    let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() as u64 + 1;
    for p in problems {
        assert!(
            p.line <= lines,
            "{p} is past the end of a {lines}-line file"
        );
        assert!(!p.message.is_empty());
    }
});
