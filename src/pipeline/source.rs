//! Reading pipeline files: TOML parsing with positions, `extends` composition, and the
//! source map that turns a key path into `file:line:column`.
//!
//! The result is a [`RawPipeline`]: one merged TOML table in which the `[[step]]` array has
//! become a table keyed by step id (so overrides can address `step.<id>.<key>`), the order
//! in which steps were declared, and a [`SourceMap`].

use super::diagnostics::{Diagnostic, Diagnostics, Location};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// A dotted key path, e.g. `["step", "stage1", "lr"]`.
pub type KeyPath = Vec<String>;

/// Joins a key path for messages: `step.stage1.lr`.
pub fn dotted(path: &[String]) -> String {
    path.join(".")
}

#[derive(Debug, Clone)]
struct SourceFile {
    path: PathBuf,
    text: String,
}

/// Maps key paths to the place in a file (or the override) that set them.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
    spans: HashMap<KeyPath, (usize, Range<usize>)>,
    overrides: HashMap<KeyPath, String>,
    main: Option<PathBuf>,
}

impl SourceMap {
    fn add_file(&mut self, path: PathBuf, text: String) -> usize {
        self.files.push(SourceFile { path, text });
        self.files.len() - 1
    }

    /// The files read (the main file and every file it `extends`).
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    /// Records that `path` was last set by a command-line override or environment variable.
    pub fn set_override(&mut self, path: KeyPath, origin: String) {
        self.overrides.insert(path, origin);
    }

    /// The most precise known location for `path`: the longest prefix that was recorded.
    pub fn locate(&self, path: &[String]) -> Location {
        for len in (0..=path.len()).rev() {
            let prefix = &path[..len];
            if let Some(origin) = self.overrides.get(prefix) {
                return Location::Override(origin.clone());
            }
            if let Some((file, span)) = self.spans.get(prefix) {
                let f = &self.files[*file];
                let (line, column) = line_col(&f.text, span.start);
                return Location::File {
                    path: f.path.clone(),
                    line,
                    column,
                };
            }
        }
        match &self.main {
            Some(p) => Location::WholeFile(p.clone()),
            None => Location::Unknown,
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// A pipeline file after `extends` resolution, before typing and validation.
#[derive(Debug, Clone)]
pub struct RawPipeline {
    /// The merged document; `step` is a table `id -> step table`.
    pub root: toml::Table,
    /// Step ids in declaration order (bases first).
    pub step_order: Vec<String>,
    pub map: SourceMap,
    /// The file given by the user.
    pub main_file: PathBuf,
    /// Problems that do not stop further validation (e.g. duplicate step ids).
    pub diags: Diagnostics,
}

/// Loads `path` and the chain of files it `extends`.
pub fn load(path: &Path) -> Result<RawPipeline, Diagnostics> {
    let mut raw = RawPipeline {
        root: toml::Table::new(),
        step_order: Vec::new(),
        map: SourceMap {
            main: Some(path.to_path_buf()),
            ..Default::default()
        },
        main_file: path.to_path_buf(),
        diags: Diagnostics::default(),
    };
    let fatal = load_into(
        path,
        &mut Vec::new(),
        &mut std::collections::HashSet::new(),
        &mut raw,
    );
    if fatal {
        return Err(raw.diags);
    }
    Ok(raw)
}

/// Merges `path` (after the files it extends) into `root`. A file already merged through
/// another `extends` branch is not read again (its values are in already), so shared bases
/// cost one read however often they are included. Returns whether a fatal problem occurred.
fn load_into(
    path: &Path,
    chain: &mut Vec<PathBuf>,
    loaded: &mut std::collections::HashSet<PathBuf>,
    raw: &mut RawPipeline,
) -> bool {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if chain.contains(&canonical) {
        let mut names: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
        names.push(canonical.display().to_string());
        raw.diags.push(Diagnostic::new(
            Location::WholeFile(path.to_path_buf()),
            format!("`extends` forms a loop: {}", names.join(" -> ")),
        ));
        return true;
    }
    if !loaded.insert(canonical.clone()) {
        return false;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            raw.diags.push(
                Diagnostic::new(
                    Location::WholeFile(path.to_path_buf()),
                    format!("cannot read pipeline file: {e}"),
                )
                .help("check the path; pipeline files live in `pipelines/`"),
            );
            return true;
        }
    };
    let toml_error = |span: Option<Range<usize>>, what: &str, message: &str| {
        let (line, column) = line_col(&text, span.map_or(0, |s| s.start));
        let location = Location::File {
            path: path.to_path_buf(),
            line,
            column,
        };
        Diagnostic::new(location, format!("{what}: {}", message.trim()))
    };
    let spanned = match DeTable::parse(&text) {
        Ok(t) => t,
        Err(e) => {
            raw.diags
                .push(toml_error(e.span(), "TOML syntax error", e.message()));
            return true;
        }
    };
    let values: toml::Table = match toml::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            raw.diags
                .push(toml_error(e.span(), "TOML error", e.message()));
            return true;
        }
    };
    let file = raw.map.add_file(path.to_path_buf(), text.clone());

    // Bases first, so that this file's values override theirs.
    let base_dir = path.parent().unwrap_or(Path::new("."));
    if let Some(ext) = values.get("extends") {
        let bases: Vec<&toml::Value> = match ext {
            toml::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        chain.push(canonical.clone());
        for base in bases {
            match base.as_str() {
                Some(rel) => {
                    if load_into(&base_dir.join(rel), chain, loaded, raw) {
                        return true;
                    }
                }
                None => {
                    raw.diags.push(at(
                        &raw.map,
                        file,
                        &spanned,
                        &["extends"],
                        "`extends` must be a file path or a list of paths",
                    ));
                    return true;
                }
            }
        }
        chain.pop();
    }

    let spans = collect_spans(&spanned, file);
    for (key, value) in values {
        match key.as_str() {
            "extends" => {}
            "step" => merge_steps(value, &spans, file, &spanned, raw),
            _ => {
                for (p, s) in spans.iter().filter(|(p, _)| p.first() == Some(&key)) {
                    raw.map.spans.insert(p.clone(), s.clone());
                }
                merge_value(&mut raw.root, key, value);
            }
        }
    }
    false
}

fn merge_steps(
    value: toml::Value,
    spans: &HashMap<KeyPath, (usize, Range<usize>)>,
    file: usize,
    spanned: &toml::Spanned<DeTable>,
    raw: &mut RawPipeline,
) {
    let toml::Value::Array(items) = value else {
        raw.diags.push(at(
            &raw.map,
            file,
            spanned,
            &["step"],
            "`step` must be an array of tables: write each step as `[[step]]`",
        ));
        return;
    };
    let steps = raw
        .root
        .entry("step")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    let steps = steps.as_table_mut().expect("step is kept as a table");
    let mut seen_here: Vec<String> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let elem_path = vec!["step".to_string(), format!("#{index}")];
        let toml::Value::Table(table) = item else {
            raw.diags.push(locate_at(
                &raw.map,
                file,
                spans,
                &elem_path,
                "each `[[step]]` entry must be a table",
            ));
            continue;
        };
        let id = match table.get("id") {
            Some(toml::Value::String(id)) => id.clone(),
            Some(_) => {
                let mut p = elem_path.clone();
                p.push("id".into());
                raw.diags.push(locate_at(
                    &raw.map,
                    file,
                    spans,
                    &p,
                    "step `id` must be a string",
                ));
                continue;
            }
            None => {
                raw.diags.push(
                    locate_at(&raw.map, file, spans, &elem_path, "step has no `id`")
                        .help("every `[[step]]` needs `id = \"...\"`, unique in the pipeline"),
                );
                continue;
            }
        };
        if seen_here.contains(&id) {
            let mut p = elem_path.clone();
            p.push("id".into());
            raw.diags.push(
                locate_at(
                    &raw.map,
                    file,
                    spans,
                    &p,
                    format!("duplicate step id `{id}`"),
                )
                .help("step ids must be unique; rename one of them"),
            );
            continue;
        }
        seen_here.push(id.clone());
        // Re-key this element's spans from `step.#i.*` to `step.<id>.*`.
        for (p, s) in spans
            .iter()
            .filter(|(p, _)| p.len() >= 2 && p[0] == "step" && p[1] == elem_path[1])
        {
            let mut keyed = p.clone();
            keyed[1] = id.clone();
            raw.map.spans.insert(keyed, s.clone());
        }
        if !raw.step_order.contains(&id) {
            raw.step_order.push(id.clone());
        }
        merge_value(steps, id, toml::Value::Table(table));
    }
}

/// Deep-merges `value` into `table[key]`: tables merge key by key, anything else replaces.
fn merge_value(table: &mut toml::Table, key: String, value: toml::Value) {
    match (table.get_mut(&key), value) {
        (Some(toml::Value::Table(existing)), toml::Value::Table(new)) => {
            for (k, v) in new {
                merge_value(existing, k, v);
            }
        }
        (_, value) => {
            table.insert(key, value);
        }
    }
}

/// Spans of every key in a parsed file; array-of-table elements are addressed `name.#i`.
fn collect_spans(
    doc: &toml::Spanned<DeTable>,
    file: usize,
) -> HashMap<KeyPath, (usize, Range<usize>)> {
    let mut out = HashMap::new();
    walk_table(doc.get_ref(), &mut Vec::new(), file, &mut out);
    out
}

fn walk_table(
    table: &DeTable,
    path: &mut KeyPath,
    file: usize,
    out: &mut HashMap<KeyPath, (usize, Range<usize>)>,
) {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        out.insert(path.clone(), (file, key.span()));
        match value.get_ref() {
            DeValue::Table(t) => walk_table(t, path, file, out),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref() {
                        path.push(format!("#{i}"));
                        out.insert(path.clone(), (file, item.span()));
                        walk_table(t, path, file, out);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
}

fn at(
    map: &SourceMap,
    file: usize,
    doc: &toml::Spanned<DeTable>,
    path: &[&str],
    msg: &str,
) -> Diagnostic {
    let spans = collect_spans(doc, file);
    let p: KeyPath = path.iter().map(|s| s.to_string()).collect();
    locate_at(map, file, &spans, &p, msg)
}

fn locate_at(
    map: &SourceMap,
    file: usize,
    spans: &HashMap<KeyPath, (usize, Range<usize>)>,
    path: &[String],
    msg: impl Into<String>,
) -> Diagnostic {
    let f = &map.files[file];
    let location = (0..=path.len())
        .rev()
        .find_map(|n| spans.get(&path[..n]))
        .map(|(_, span)| {
            let (line, column) = line_col(&f.text, span.start);
            Location::File {
                path: f.path.clone(),
                line,
                column,
            }
        })
        .unwrap_or_else(|| Location::WholeFile(f.path.clone()));
    Diagnostic::new(location, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn line_col_is_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn extends_merges_steps_by_id_and_tracks_lines() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            "[pipeline]\nname = \"b\"\nseed = 1\n\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"echo a\"\n",
        );
        let main = write(
            dir.path(),
            "main.toml",
            "extends = \"base.toml\"\n[pipeline]\nseed = 2\n\n[[step]]\nid = \"a\"\nrun = \"echo A\"\n\n[[step]]\nid = \"b\"\nkind = \"command\"\nrun = \"x\"\n",
        );
        let raw = load(&main).unwrap();
        assert_eq!(raw.step_order, vec!["a", "b"]);
        let a = raw.root["step"]["a"].as_table().unwrap();
        assert_eq!(a["run"].as_str(), Some("echo A"));
        assert_eq!(a["kind"].as_str(), Some("command"));
        assert_eq!(raw.root["pipeline"]["name"].as_str(), Some("b"));
        assert_eq!(raw.root["pipeline"]["seed"].as_integer(), Some(2));
        let path = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        match raw.map.locate(&path("step.a.run")) {
            Location::File { path, line, .. } => {
                assert!(path.ends_with("main.toml"));
                assert_eq!(line, 7);
            }
            other => panic!("{other:?}"),
        }
        match raw.map.locate(&path("step.a.kind")) {
            Location::File { path, line, .. } => {
                assert!(path.ends_with("base.toml"));
                assert_eq!(line, 7);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_base_included_by_many_files_is_read_once() {
        // 20 levels, each file extending the next one twice: 2^20 reads if every inclusion
        // were read again.
        let dir = tempfile::tempdir().unwrap();
        let n = 20;
        write(
            dir.path(),
            &format!("f{n}.toml"),
            "[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"x\"\n",
        );
        for i in (0..n).rev() {
            let next = format!("f{}.toml", i + 1);
            write(
                dir.path(),
                &format!("f{i}.toml"),
                &format!("extends = [\"{next}\", \"{next}\"]\n"),
            );
        }
        let started = std::time::Instant::now();
        let raw = load(&dir.path().join("f0.toml")).unwrap();
        assert_eq!(raw.step_order, vec!["a"]);
        assert!(
            started.elapsed().as_secs_f64() < 2.0,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(raw.map.files().len(), n + 1);
    }

    #[test]
    fn syntax_error_and_extends_loop_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(dir.path(), "bad.toml", "[pipeline]\nname = \n");
        let err = load(&bad).unwrap_err();
        assert!(err.to_string().contains("bad.toml:2"), "{err}");
        write(dir.path(), "x.toml", "extends = \"y.toml\"\n");
        let y = write(dir.path(), "y.toml", "extends = \"x.toml\"\n");
        let err = load(&y).unwrap_err();
        assert!(err.to_string().contains("loop"), "{err}");
    }
}
