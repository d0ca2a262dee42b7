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
