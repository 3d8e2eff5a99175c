//! Validation: turns a layered [`RawPipeline`] into a typed [`Pipeline`], collecting every
//! problem at once — unknown keys and sections, wrong types, unknown step kinds, unknown or
//! misspelt `depends_on` ids, dependency cycles, two steps exporting to one place, missing
//! input files.

use super::decode::decode;
use super::diagnostics::{Diagnostic, Diagnostics, did_you_mean};
use super::graph::StepGraph;
use super::paths;
use super::schema::{self, Device, Pipeline, PipelineHeader, StepDef};
use super::source::{KeyPath, RawPipeline};
use super::step::StepKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level sections a pipeline file may have.
const SECTIONS: &[&str] = &["pipeline", "step"];

/// Keys every step has, whatever its kind.
#[derive(Debug, Deserialize)]
struct StepCommon {
    id: String,
    kind: String,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    export: Option<PathBuf>,
    #[serde(default)]
    description: String,
}
const COMMON_KEYS: &[&str] = &[
    "id",
    "kind",
    "depends_on",
    "export",
    "description",
    "resources",
];

fn kp(parts: &[&str]) -> KeyPath {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Validates and types a pipeline.
pub fn validate(raw: RawPipeline, kinds: &[StepKind]) -> Result<Pipeline, Diagnostics> {
    let names: Vec<&str> = kinds.iter().map(|k| k.name).collect();
    let mut diags = raw.diags.clone();
    let map = &raw.map;

    for key in raw.root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            diags.push(
                Diagnostic::new(map.locate(&kp(&[key])), format!("unknown section `{key}`"))
                    .key(key.clone())
                    .help_opt(did_you_mean(key, SECTIONS.iter().copied()))
                    .help("a pipeline file has `extends`, `[pipeline]` and `[[step]]` tables"),
            );
        }
    }

    let header_value = raw
        .root
        .get("pipeline")
        .cloned()
        .unwrap_or(toml::Value::Table(Default::default()));
    let header: Option<PipelineHeader> = decode(header_value, &kp(&["pipeline"]), map, &mut diags);
    let base_dir = raw
        .main_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base_dir = base_dir
        .canonicalize()
        .unwrap_or_else(|_| base_dir.to_path_buf());
    let root = match header.as_ref().and_then(|h| h.root.clone()) {
        Some(r) if r.is_absolute() => r,
        Some(r) => base_dir.join(r),
        None => base_dir,
    };
    let root = root.canonicalize().unwrap_or(root);
    if let Some(w) = header.as_ref().and_then(|h| h.wandb.as_ref()) {
        if let Err(why) = crate::wandb::check_sdk(&w.python) {
            diags.push(
                Diagnostic::new(map.locate(&kp(&["pipeline", "wandb"])), why)
                    .key("pipeline.wandb")
                    .help("install it (`pip install wandb`), set `pipeline.wandb.python`, or remove [pipeline.wandb]"),
            );
        }
        if let Some(mode) = w
            .mode
            .as_deref()
            .filter(|m| !["online", "offline", "disabled"].contains(m))
        {
            diags.push(
                Diagnostic::new(
                    map.locate(&kp(&["pipeline", "wandb", "mode"])),
                    format!("unknown mode `{mode}`"),
                )
                .key("pipeline.wandb.mode")
                .help("use \"online\", \"offline\" or \"disabled\""),
            );
        }
    }
    if let Some(h) = &header {
        if !h.device.available() {
            let devices: Vec<String> = [Device::Cpu, Device::Wgpu(None), Device::Tch]
                .into_iter()
                .filter(|d| d.available())
                .map(|d| format!("\"{d}\""))
                .collect();
            diags.push(
                Diagnostic::new(
                    map.locate(&kp(&["pipeline", "device"])),
                    format!(
                        "device `{}` is not available in this build (devices: {})",
                        h.device,
                        devices.join(", ")
                    ),
                )
                .key("pipeline.device")
                .help(h.device.build_hint()),
            );
        }
        let name = h
            .name
            .clone()
            .unwrap_or_else(|| default_name(&raw.main_file));
        if let Err(why) = paths::check_component("pipeline name", &name) {
            let help = if h.name.is_some() {
                "set `[pipeline] name` to a plain name such as \"smollm2\" (runs go to <runs_dir>/<name>/)"
            } else {
                "the name comes from the file name here; set `[pipeline] name` to a plain name"
            };
            diags.push(
                Diagnostic::new(map.locate(&kp(&["pipeline", "name"])), why)
                    .key("pipeline.name")
                    .help(help),
            );
        }
        for (key, message) in h.executor.problems() {
            let mut path = kp(&["pipeline", "executor"]);
            path.extend(key.split('.').map(String::from));
            diags.push(
                Diagnostic::new(map.locate(&path), message).key(format!("pipeline.executor.{key}")),
            );
        }
        if h.max_parallel == 0 {
            diags.push(
                Diagnostic::new(
                    map.locate(&kp(&["pipeline", "max_parallel"])),
                    "must be at least 1",
                )
                .key("pipeline.max_parallel"),
            );
        }
    }

    // Steps: common keys, then the kind's own settings.
    let step_tables = raw
        .root
        .get("step")
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();
    let mut steps: Vec<StepDef> = Vec::new();
    let mut step_paths: Vec<KeyPath> = Vec::new();
    for id in &raw.step_order {
        let path = kp(&["step", id]);
        let Some(table) = step_tables.get(id).and_then(|v| v.as_table()).cloned() else {
            diags.push(
                Diagnostic::new(map.locate(&path), format!("step `{id}` is not a table"))
                    .key(format!("step.{id}"))
                    .help("an override replaced the whole step; set one of its keys instead: `step.<id>.<key>=value`"),
            );
            continue;
        };
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || id.is_empty()
        {
            diags.push(
                Diagnostic::new(map.locate(&kp(&["step", id, "id"])), format!("invalid step id `{id}`"))
                    .help("use letters, digits, `_` and `-` only (ids name folders and environment variables)"),
            );
        }
        let (mut common, rest): (toml::Table, toml::Table) = table
            .into_iter()
            .partition(|(k, _)| COMMON_KEYS.contains(&k.as_str()));
        let resources = match common.remove("resources") {
            None => Some(Default::default()),
            Some(v) => {
                let mut at = path.clone();
                at.push("resources".into());
                decode::<super::slurm::Resources>(v, &at, map, &mut diags)
            }
        };
        if !common.contains_key("kind") {
            diags.push(
                Diagnostic::new(map.locate(&path), format!("step `{id}` has no `kind`"))
                    .help(format!("known kinds: {}", names.join(", "))),
            );
            continue;
        }
        let Some(common) = decode::<StepCommon>(toml::Value::Table(common), &path, map, &mut diags)
        else {
            continue;
        };
        let Some(kind) = kinds.iter().find(|k| k.name == common.kind) else {
            diags.push(
                Diagnostic::new(
                    map.locate(&kp(&["step", id, "kind"])),
                    format!("unknown step kind `{}`", common.kind),
                )
                .key(format!("step.{id}.kind"))
                .help_opt(did_you_mean(&common.kind, names.iter().copied()))
                .help(format!("known kinds: {}", names.join(", "))),
            );
            continue;
        };
        let Some(settings) = (kind.decode)(toml::Value::Table(rest), &path, map, &mut diags) else {
            continue;
        };
        let Some(resources) = resources else {
            continue;
        };
        steps.push(StepDef {
            id: common.id,
            depends_on: common.depends_on,
            export: common.export,
            description: common.description,
            resources,
            settings: settings.into(),
        });
        step_paths.push(path);
    }

    // Dependencies.
    let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let mut dep_indices: Vec<Vec<usize>> = Vec::new();
    for step in &steps {
        let mut ds = Vec::new();
        for dep in &step.depends_on {
            match ids.iter().position(|i| i == dep) {
                Some(j) => ds.push(j),
                // Declared but not decoded: its own errors are reported already.
                None if raw.step_order.contains(dep) => {}
                None => {
                    let all_ids = raw.step_order.iter().map(String::as_str);
                    diags.push(
                        Diagnostic::new(
                            map.locate(&kp(&["step", &step.id, "depends_on"])),
                            format!("step `{}` depends on unknown step `{dep}`", step.id),
                        )
                        .key(format!("step.{}.depends_on", step.id))
                        .help_opt(did_you_mean(dep, all_ids)),
                    );
                }
            }
        }
        dep_indices.push(ds);
    }
    let graph = StepGraph::from_deps(&dep_indices);
    if let Some(cycle) = graph.find_cycle() {
        let names: Vec<&str> = cycle.iter().map(|&i| steps[i].id.as_str()).collect();
        diags.push(
            Diagnostic::new(
                map.locate(&kp(&["step", names[0], "depends_on"])),
                format!("dependency cycle: {}", names.join(" -> ")),
            )
            .help(
                "`a -> b` means step a depends on step b; remove one of these `depends_on` entries",
            ),
        );
    }

    // Two steps writing the same place, exports that could overwrite what the runner did not
    // create, and inputs that do not exist.
    let runs_root = header
        .as_ref()
        .map_or_else(|| root.join("runs"), |h| h.runs_root(&root));
    let all_inputs = schema::input_paths(&steps);
    let own_files = map.files();
    let mut exports: BTreeMap<PathBuf, &str> = BTreeMap::new();
    for step in &steps {
        if let Some(export) = &step.export {
            if let Some(problem) =
                paths::export_problem(export, &root, &runs_root, &all_inputs, &own_files)
            {
                diags.push(
                    Diagnostic::new(map.locate(&kp(&["step", &step.id, "export"])), problem)
                        .key(format!("step.{}.export", step.id))
                        .help("export to a new folder of its own inside the pipeline root, e.g. `export = \"models/my-student\"`"),
                );
            }
            let abs = paths::normalize(&root.join(export));
            if let Some(other) = exports.insert(abs.clone(), &step.id) {
                diags.push(
                    Diagnostic::new(
                        map.locate(&kp(&["step", &step.id, "export"])),
                        format!(
                            "steps `{other}` and `{}` both write to `{}`",
                            step.id,
                            export.display()
                        ),
                    )
                    .help("give each step its own `export` directory"),
                );
            }
        }
        for (key, input) in step.settings.input_paths() {
            let abs = root.join(&input);
            if !abs.exists() {
                diags.push(
                    Diagnostic::new(
                        map.locate(&kp(&["step", &step.id, key])),
                        format!(
                            "input `{}` does not exist (looked for {})",
                            input.display(),
                            abs.display()
                        ),
                    )
                    .key(format!("step.{}.{key}", step.id))
                    .help(
                        "relative paths are resolved against the pipeline root (`[pipeline] root`)",
                    ),
                );
            }
        }
        for (key, message) in step.resources.problems() {
            let mut path = kp(&["step", &step.id, "resources"]);
            path.extend(key.split('.').map(String::from));
            diags.push(
                Diagnostic::new(map.locate(&path), message)
                    .key(format!("step.{}.resources.{key}", step.id)),
            );
        }
        let ranks = step.resources.ranks();
        if ranks > 1 {
            // The key's line, or the table's when the value comes from a default.
            let at = |key: &str| map.locate(&kp(&["step", &step.id, "resources", key]));
            let (max, why) = step.settings.max_ranks();
            if !crate::dist::available() {
                diags.push(
                    Diagnostic::new(
                        at("tasks_per_node"),
                        format!("{ranks} ranks need a runner built with MPI"),
                    )
                    .key(format!("step.{}.resources", step.id))
                    .help("build with `--features mpi` (needs an MPI library such as OpenMPI, and libclang), or ask for one rank"),
                );
            } else if ranks > max {
                diags.push(
                    Diagnostic::new(
                        at("tasks_per_node"),
                        format!("{ranks} ranks asked for, but {why}"),
                    )
                    .key(format!("step.{}.resources", step.id)),
                );
            }
        }
        for (key, message) in step.settings.problems() {
            let mut path = kp(&["step", &step.id]);
            path.extend(key.split('.').map(String::from));
            diags.push(
                Diagnostic::new(map.locate(&path), message).key(format!("step.{}.{key}", step.id)),
            );
        }
        for (key, dep) in step.settings.dep_refs() {
            if !step.depends_on.contains(&dep) {
                diags.push(
                    Diagnostic::new(
                        map.locate(&kp(&["step", &step.id, key])),
                        format!("`@{dep}` names the artifacts of step `{dep}`, which `{}` does not depend on", step.id),
                    )
                    .key(format!("step.{}.{key}", step.id))
                    .help(format!("add \"{dep}\" to `depends_on` of step `{}`", step.id)),
                );
            }
        }
    }

    if raw.step_order.is_empty() {
        diags.push(
            Diagnostic::new(map.locate(&kp(&["step"])), "the pipeline has no steps").help(
                "add `[[step]]` tables (see pipelines/ci.toml), or `extends` a file that has them",
            ),
        );
    }

    diags.sort();
    let header = match header {
        Some(h) if diags.is_empty() => h,
        _ => return Err(diags),
    };
    let name = header
        .name
        .clone()
        .unwrap_or_else(|| default_name(&raw.main_file));
    diags.into_result(Pipeline {
        name,
        header,
        root,
        steps,
        main_file: raw.main_file,
        resolved: raw.root,
        source: raw.map,
    })
}

/// The pipeline's name when `[pipeline] name` is not set: the file's stem.
fn default_name(main_file: &Path) -> String {
    main_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into())
}
