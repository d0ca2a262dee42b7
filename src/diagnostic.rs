//! A problem found in a file the user wrote, with where it is and what to do about it.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: u64,
    pub column: u64,
    /// The invariant the problem belongs to, when there is one.
    pub invariant: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, line: u64, column: u64, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            column,
            invariant: None,
            message: message.into(),
        }
    }

    pub fn at(file: &Path, loc: serde_saphyr::Location, message: impl Into<String>) -> Self {
        Self::new(file, loc.line(), loc.column(), message)
    }

    pub fn in_invariant(mut self, name: Option<&str>) -> Self {
        self.invariant = name.map(str::to_owned);
        self
    }

    /// A YAML syntax or shape error from the deserializer.
    pub fn from_yaml(file: &Path, err: &serde_saphyr::Error) -> Self {
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        if let Some(message) = yaml_limit_message(err) {
            return Self::new(file, line, column, message);
        }
        let rendered = err.without_snippet().to_string();
        // The deserializer appends its own position; ours is in front already.
        let message = rendered
            .split(" at line ")
            .next()
            .unwrap_or(&rendered)
            .trim()
            .to_owned();
        Self::new(file, line, column, message)
    }
}

/// Our own words for the deserializer's refusals whose message speaks to a programmer (the
/// API to call instead, a `Debug` of its budget): what is wrong in the file, and what to do.
fn yaml_limit_message(err: &serde_saphyr::Error) -> Option<String> {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;
    Some(match err.without_snippet() {
        E::DuplicateMappingKey { key: Some(k), .. } => {
            format!("`{k}` is given twice in the same mapping; keep one (YAML allows each key once)")
        }
        E::DuplicateMappingKey { key: None, .. } => {
            "a key is given twice in the same mapping; keep one (YAML allows each key once)".into()
        }
        E::MultipleDocuments { .. } => "a second YAML document (after a `---`) starts here; a file holds one document: keep everything under one top-level mapping, or move the rest to a file of its own".into(),
        E::Budget { breach, .. } => match breach {
            B::Nodes { .. } | B::Events { .. } | B::ScalarBytes { .. } | B::InputBytes { .. } => {
                "the file is larger than trueup reads (more than 250,000 YAML values); split it into several files".into()
            }
            B::Depth { .. } => format!(
                "the YAML is nested more than {} levels deep; no trueup file needs that, look for a runaway indentation or bracket",
                crate::yaml::MAX_DEPTH
            ),
            B::Aliases { .. } | B::Anchors { .. } | B::AliasAnchorRatio { .. } | B::MergeKeys { .. } => {
                "the file uses more aliases (`*name`) than trueup expands; write the values out".into()
            }
            B::Documents { .. } => "the file holds more YAML documents than trueup reads; a file holds one".into(),
            _ => "the file is larger or more deeply nested than trueup reads; split it into several files".into(),
        },
        _ => return None,
    })
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if let Some(name) = &self.invariant {
            write!(f, "invariant `{name}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Several diagnostics, shown one per line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
