//! Configuration layering: pipeline file < environment (`RUNNER_SECTION__KEY`) < `--set key=value`.
//!
//! Layering is done with figment over the merged file tree. Every overridden key is recorded in
//! the source map, so that a bad value set on the command line is reported as coming from there.

use super::diagnostics::{Diagnostic, Diagnostics, Location, did_you_mean};
use super::source::{KeyPath, RawPipeline, dotted};
use figment::Figment;
use figment::providers::{Env, Serialized};
use figment::value::Value as FigValue;
use std::str::FromStr;

/// Prefix of environment variables that override configuration keys.
/// `RUNNER_PIPELINE__SEED=3` sets `pipeline.seed`; `RUNNER_STEP__STAGE1__LR=1e-4` sets
/// `step.stage1.lr` (figment lower-cases environment keys).
pub const ENV_PREFIX: &str = "RUNNER_";

/// Overrides given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `(dotted.key, raw value)` pairs from `--set`, in order.
    pub sets: Vec<(String, String)>,
    /// Whether `RUNNER_*__*` environment variables are applied.
    pub use_env: bool,
}

impl Overrides {
    /// Parses `key=value` strings.
    pub fn parse_sets(items: &[String]) -> Result<Vec<(String, String)>, Diagnostics> {
        let mut diags = Diagnostics::default();
        let mut out = Vec::new();
        for item in items {
            match item.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    out.push((k.trim().to_string(), v.to_string()))
                }
                _ => diags.push(
                    Diagnostic::new(
                        Location::Override(format!("--set {item}")),
                        "expected `key=value`",
                    )
                    .help("for example `--set step.stage1.lr=1e-4` or `--set pipeline.seed=7`"),
                ),
            }
        }
        diags.into_result(out)
    }
}

/// A `--set` value read as TOML (`1e-4`, `true`, `"text"`, `[1, 3]`, `{ every = 2 }`), or
/// `None` for anything TOML does not read (then it is a bare string such as `echo hi`).
fn toml_value(raw: &str) -> Option<toml::Value> {
    let doc: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    doc.get("v").cloned()
}

/// Applies environment and `--set` overrides on top of the file values.
pub fn apply(mut raw: RawPipeline, overrides: &Overrides) -> Result<RawPipeline, Diagnostics> {
    let mut figment = Figment::from(Serialized::defaults(&raw.root));
    let mut origins: Vec<(KeyPath, String)> = Vec::new();

    if overrides.use_env {
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        for (key, _) in env.iter() {
            let path: KeyPath = key.as_str().split('.').map(String::from).collect();
            let var = format!(
                "{ENV_PREFIX}{}",
                key.as_str().replace('.', "__").to_uppercase()
            );
            origins.push((path, format!("environment variable {var}")));
        }
        figment = figment.merge(env);
    }
    for (key, value) in &overrides.sets {
        figment = match toml_value(value) {
            Some(v) => figment.merge(Serialized::global(key, v)),
            None => {
                let parsed = FigValue::from_str(value).unwrap_or_else(|never| match never {});
                figment.merge(Serialized::global(key, parsed))
            }
        };
        origins.push((
            key.split('.').map(String::from).collect(),
            format!("--set {key}={value}"),
        ));
    }

    let mut diags = Diagnostics::default();
    for (path, origin) in &origins {
        if path.first().map(String::as_str) == Some("step") {
            match path.get(1) {
                Some(id) if raw.step_order.contains(id) && path.len() < 3 => diags.push(
                    Diagnostic::new(
                        Location::Override(origin.clone()),
                        format!("`step.{id}` would replace the whole step `{id}`"),
                    )
                    .help("set one key of the step: `step.<id>.<key>=value`"),
                ),
                Some(id) if raw.step_order.contains(id) => {}
                Some(id) => diags.push(
                    Diagnostic::new(
                        Location::Override(origin.clone()),
                        format!("no step with id `{id}`"),
                    )
                    .help_opt(did_you_mean(id, raw.step_order.iter().map(String::as_str))),
                ),
                None => diags.push(Diagnostic::new(
                    Location::Override(origin.clone()),
                    "`step` overrides need a step id and a key: `step.<id>.<key>=value`",
                )),
            }
        }
        raw.map.set_override(path.clone(), origin.clone());
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    match figment.extract::<toml::Table>() {
        Ok(root) => {
            raw.root = root;
            Ok(raw)
        }
        Err(e) => {
            let key = e.path.clone();
            let location = raw.map.locate(&key);
            Err(Diagnostics(vec![
                Diagnostic::new(location, format!("cannot apply override: {e}")).key(dotted(&key)),
            ]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::source;

    /// Loads `text` as a pipeline file and applies `sets` (no environment).
    fn apply_sets(text: &str, sets: &[(&str, &str)]) -> Result<RawPipeline, Diagnostics> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, text).unwrap();
        let raw = source::load(&p).unwrap();
        let o = Overrides {
            sets: sets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            use_env: false,
        };
        apply(raw, &o)
    }

    #[test]
    fn set_overrides_file_and_is_located_as_override() {
        let raw = apply_sets(
            "[pipeline]\nseed = 1\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"x\"\n",
            &[("pipeline.seed", "5"), ("step.a.run", "echo hi")],
        )
        .unwrap();
        assert_eq!(raw.root["pipeline"]["seed"].as_integer(), Some(5));
        assert_eq!(raw.root["step"]["a"]["run"].as_str(), Some("echo hi"));
        let loc = raw.map.locate(&["pipeline".into(), "seed".into()]);
        assert_eq!(loc, Location::Override("--set pipeline.seed=5".into()));
    }

    #[test]
    fn set_values_are_read_as_toml() {
        assert_eq!(toml_value("1e-4"), Some(toml::Value::Float(1e-4)));
        assert_eq!(toml_value("1e30"), Some(toml::Value::Float(1e30)));
        assert_eq!(toml_value("7"), Some(toml::Value::Integer(7)));
        assert_eq!(toml_value("true"), Some(toml::Value::Boolean(true)));
        assert_eq!(
            toml_value("[1, 3]"),
            Some(toml::Value::Array(vec![1.into(), 3.into()]))
        );
        assert_eq!(toml_value("echo hi"), None);
        let raw = apply_sets(
            "[pipeline]\nseed = 1\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"x\"\n",
            &[("step.a.lr", "1e-4"), ("step.a.run", "echo hi")],
        )
        .unwrap();
        assert_eq!(raw.root["step"]["a"]["lr"].as_float(), Some(1e-4));
        assert_eq!(raw.root["step"]["a"]["run"].as_str(), Some("echo hi"));
    }

    #[test]
    fn override_of_a_whole_step_is_refused() {
        let err = apply_sets(
            "[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"x\"\n",
            &[("step.a", "")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("replace the whole step"), "{err}");
    }

    #[test]
    fn override_of_unknown_step_suggests_a_name() {
        let err = apply_sets(
            "[[step]]\nid = \"stage1\"\nkind = \"command\"\nrun = \"x\"\n",
            &[("step.stage_1.lr", "1")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did you mean `stage1`"), "{err}");
    }
}
