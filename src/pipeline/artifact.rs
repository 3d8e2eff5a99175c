//! Paths in step settings: `"@step"` or `"@step/sub/path"` names a dependency's artifacts (the
//! step must be in `depends_on`); anything else is a file or folder relative to the pipeline
//! root (it must exist, and its contents are part of the cache key); `hf://ORG/NAME[@REV]` and
//! `hf://datasets/ORG/NAME[@REV]/PATH` name a Hub model or dataset files (see [`crate::hub`]):
//! the commit the revision resolves to is part of the cache key.

use super::StepContext;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ArtifactRef {
    /// Inside the output folder of dependency `step`.
    Dep { step: String, path: PathBuf },
    /// Relative to the pipeline root.
    Root(PathBuf),
    /// On the Hugging Face Hub.
    Hub(crate::hub::HubRef),
}

impl TryFrom<String> for ArtifactRef {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.strip_prefix('@') {
            Some(rest) => {
                let (step, path) = rest.split_once('/').unwrap_or((rest, ""));
                if step.is_empty() {
                    return Err(format!(
                        "`{s}`: write `@STEP` or `@STEP/path` to name a dependency's artifacts"
                    ));
                }
                let path = PathBuf::from(path);
                if !path.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::Normal(_) | std::path::Component::CurDir
                    )
                }) {
                    return Err(format!(
                        "`{s}`: the path after `@{step}/` must stay inside the dependency's artifact folder (no `..`, no absolute path)"
                    ));
                }
                Ok(ArtifactRef::Dep {
                    step: step.to_string(),
                    path,
                })
            }
            None if s.is_empty() => Err("the path is empty".into()),
            None if s.starts_with(crate::hub::SCHEME) => {
                crate::hub::HubRef::parse(&s).map(ArtifactRef::Hub)
            }
            None => Ok(ArtifactRef::Root(PathBuf::from(s))),
        }
    }
}

impl From<ArtifactRef> for String {
    fn from(a: ArtifactRef) -> String {
        a.to_string()
    }
}

impl fmt::Display for ArtifactRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactRef::Dep { step, path } if path.as_os_str().is_empty() => write!(f, "@{step}"),
            ArtifactRef::Dep { step, path } => write!(f, "@{step}/{}", path.display()),
            ArtifactRef::Root(p) => write!(f, "{}", p.display()),
            ArtifactRef::Hub(h) => write!(f, "{h}"),
        }
    }
}

impl ArtifactRef {
    /// The dependency this path points into, if any.
    /// A short name: the step for `@step`, else the path.
    pub fn label(&self) -> String {
        match self {
            ArtifactRef::Dep { step, path } if path.as_os_str().is_empty() => step.clone(),
            ArtifactRef::Dep { step, path } => format!("{step}/{}", path.display()),
            ArtifactRef::Root(p) => p.display().to_string(),
            ArtifactRef::Hub(h) => h.to_string(),
        }
    }

    pub fn dep(&self) -> Option<&str> {
        match self {
            ArtifactRef::Dep { step, .. } => Some(step),
            ArtifactRef::Root(_) | ArtifactRef::Hub(_) => None,
        }
    }

    /// The root-relative path, for paths that are pipeline inputs.
    pub fn input(&self) -> Option<&Path> {
        match self {
            ArtifactRef::Root(p) => Some(p),
            ArtifactRef::Dep { .. } | ArtifactRef::Hub(_) => None,
        }
    }

    /// The Hub repository, for `hf://` references.
    pub fn hub(&self) -> Option<&crate::hub::HubRef> {
        match self {
            ArtifactRef::Hub(h) => Some(h),
            _ => None,
        }
    }

    /// The absolute path while the step runs; it must exist. A dependency's path must resolve
    /// (symbolic links followed) inside that dependency's artifact folder, whose digest is part
    /// of this step's cache key.
    pub fn resolve(&self, ctx: &StepContext) -> Result<PathBuf> {
        let path = match self {
            ArtifactRef::Hub(h) => return crate::hub::fetch(h),
            ArtifactRef::Root(p) => ctx.resolve(p),
            ArtifactRef::Dep { step, path } => {
                let dir = ctx.deps.get(step).with_context(|| {
                    format!(
                        "`{self}`: step `{step}` is not a dependency of `{}`",
                        ctx.id
                    )
                })?;
                let full = dir.join(path);
                if let (Ok(real), Ok(dir_real)) = (full.canonicalize(), dir.canonicalize()) {
                    anyhow::ensure!(
                        real.starts_with(&dir_real),
                        "`{self}` leads to {}, outside the artifacts of step `{step}`",
                        real.display()
                    );
                }
                full
            }
        };
        anyhow::ensure!(
            path.exists(),
            "`{self}` does not exist (looked for {})",
            path.display()
        );
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let a = ArtifactRef::try_from("@fetch/x/model.gguf".to_string()).unwrap();
        assert_eq!(
            a,
            ArtifactRef::Dep {
                step: "fetch".into(),
                path: "x/model.gguf".into()
            }
        );
        assert_eq!(a.to_string(), "@fetch/x/model.gguf");
        assert_eq!(
            ArtifactRef::try_from("@import".to_string())
                .unwrap()
                .to_string(),
            "@import"
        );
        assert_eq!(
            ArtifactRef::try_from("data/a.txt".to_string())
                .unwrap()
                .input(),
            Some(Path::new("data/a.txt"))
        );
        assert!(ArtifactRef::try_from("@".to_string()).is_err());
        assert!(ArtifactRef::try_from("@a/../b".to_string()).is_err());
        assert!(ArtifactRef::try_from("@a//etc/passwd".to_string()).is_err());
        assert!(ArtifactRef::try_from("@a/x/../../b".to_string()).is_err());
    }
}
