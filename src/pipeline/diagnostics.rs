//! Configuration diagnostics: every problem found in a pipeline file, with where it is.
//!
//! Validation never stops at the first problem. It collects [`Diagnostic`]s, each pointing at
//! a file and line (or at the command-line override / environment variable that set the value),
//! and reports them all at once.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position in a pipeline file (1-based line and column).
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    /// A whole file, when no finer position is known.
    WholeFile(PathBuf),
    /// A value set outside any file: `--set key=value` or an environment variable.
    Override(String),
    /// Nowhere in particular (e.g. a command-line flag).
    Unknown,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Location::WholeFile(path) => write!(f, "{}", path.display()),
            Location::Override(what) => write!(f, "{what}"),
            Location::Unknown => write!(f, "<command line>"),
        }
    }
}

/// One problem in a pipeline's configuration.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub location: Location,
    /// Dotted key path, e.g. `step.stage1.lr`, when the problem concerns a key.
    pub key: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        Diagnostic {
            location,
            key: None,
            message: message.into(),
            help: None,
        }
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a help line (several may be given; they are shown in order).
    pub fn help(mut self, help: impl Into<String>) -> Self {
        let help = help.into();
        self.help = Some(match self.help.take() {
            Some(prev) => format!("{prev}\n  help: {help}"),
            None => help,
        });
        self
    }

    pub fn help_opt(self, help: Option<String>) -> Self {
        match help {
            Some(h) => self.help(h),
            None => self,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}: ", self.location)?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// All problems found in one validation pass.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Orders diagnostics by file and line (others keep their order, after those in files).
    pub fn sort(&mut self) {
        self.0.sort_by_key(|d| match &d.location {
            Location::File { path, line, column } => (0, Some(path.clone()), *line, *column),
            _ => (1, None, 0, 0),
        });
    }

    /// `Ok(value)` when nothing was reported, otherwise all diagnostics.
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in the pipeline configuration",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// "did you mean `x`?" for a misspelt name, when a close candidate exists.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("stage_1", ["stage1", "sft"]).as_deref(),
            Some("did you mean `stage1`?")
        );
        assert_eq!(did_you_mean("zzz", ["stage1", "sft"]), None);
    }
}
