//! End-to-end: `runner generate` on the tiny Qwen2 checkpoint, and the `fetch` / `import` step
//! kinds' checks (dependency references, checksums).

mod common;

use common::Project;
use common::python::tiny_qwen2;

#[test]
fn generate_streams_text_with_and_without_chat_template() {
    let p = Project::new();
    let model = p.path().join("tiny");
    tiny_qwen2(&model, &[]);
    let m = model.to_str().unwrap();
    let r = p
        .run(&[
            "generate",
            "--model",
            m,
            "--raw",
            "Hello",
            "--max-new-tokens",
            "5",
        ])
        .ok();
    assert!(r.stderr.contains("5 new tokens"), "{}", r.stderr);
    let r = p
        .run(&[
            "generate",
            "--model",
            m,
            "Hi",
            "--max-new-tokens",
            "3",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
        ])
        .ok();
    assert!(r.stderr.contains("prompt tokens"), "{}", r.stderr);
    // The chat template wrapped the prompt: more tokens than the two bytes of "Hi".
    let n: usize = r
        .stderr
        .trim_start_matches('[')
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 20, "{}", r.stderr);
}

#[test]
fn generate_reports_bad_model_dirs_and_flags() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("empty")).unwrap();
    let r = p.run(&["generate", "--model", "empty", "Hi"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("tokenizer.json") || r.stderr.contains("config.json"),
        "{}",
        r.stderr
    );
    let model = p.path().join("tiny");
    tiny_qwen2(&model, &[]);
    let r = p.run(&["generate", "--model", "tiny", "Hi", "--top-p", "0"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("top_p"), "{}", r.stderr);
}

#[test]
fn import_must_depend_on_the_step_it_reads() {
    let p = Project::new();
    p.write(
        "pipe.toml",
        r#"
[[step]]
id = "get"
kind = "fetch"
registry = "pypi"
package = "six"
version = "1.16.0"
sha256 = "00"

[[step]]
id = "model"
kind = "import"
gguf = "@get/x.gguf"

[[step]]
id = "local"
kind = "import"
gguf = "missing.gguf"

[[step]]
id = "half"
kind = "import"
gguf = "missing.gguf"
dtype = "f16"
"#,
    );
    let r = p.run(&["validate", "pipe.toml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("pipe.toml:13") && r.stderr.contains("add \"get\" to `depends_on`"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("missing.gguf") && r.stderr.contains("does not exist"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("pipe.toml:24") && r.stderr.contains("`f16`, expected `f32` or `bf16`"),
        "{}",
        r.stderr
    );
}

#[test]
fn fetch_checks_the_sha256() {
    let p = Project::new();
    let pipe = |sha: &str| {
        format!(
            "[[step]]\nid = \"six\"\nkind = \"fetch\"\nregistry = \"pypi\"\npackage = \"six\"\n\
             version = \"1.16.0\"\ndist = \"wheel\"\nsha256 = \"{sha}\"\n\
             extract = [{{ path = \"six.py\" }}]\n"
        )
    };
    p.write(
        "bad.toml",
        &pipe("0000000000000000000000000000000000000000000000000000000000000000"),
    );
    let r = p.run(&["run", "bad.toml"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("sha256 mismatch")
            && r.stderr.contains("six-1.16.0-py2.py3-none-any.whl"),
        "{}",
        r.stderr
    );
    p.write(
        "good.toml",
        &pipe("8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"),
    );
    p.run(&["run", "good.toml"]).ok();
    let run = p.runs("good").pop().unwrap();
    assert!(run.join("six/out/six.py").is_file());
    assert!(!run.join("six/out/six-1.16.0-py2.py3-none-any.whl").exists());
}

#[test]
fn impossible_or_inconsistent_configs_are_refused_without_allocating() {
    let p = Project::new();
    let model = p.path().join("tiny");
    tiny_qwen2(&model, &[]);
    let original = std::fs::read_to_string(model.join("config.json")).unwrap();
    let m = model.to_str().unwrap();
    for (key, value, expect) in [
        // Far beyond any real model: refused from the config alone.
        ("hidden_size", "1000000000", "hidden_size"),
        ("vocab_size", "1000000000000", "vocab_size"),
        ("rms_norm_eps", "0.0", "rms_norm_eps"),
        ("head_dim", "0", "head_dim"),
        // Plausible, but not what the weights hold: 4096 × 4096 × layers would be allocated
        // from the config before; now the headers are compared first.
        ("hidden_size", "4096", "does not match its config.json"),
        (
            "intermediate_size",
            "1000000",
            "does not match its config.json",
        ),
    ] {
        let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
        cfg[key] = serde_json::from_str(value).unwrap();
        std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
        let r = p.run(&[
            "generate",
            "--model",
            m,
            "--raw",
            "Hi",
            "--max-new-tokens",
            "1",
        ]);
        assert_eq!(r.code, 2, "{key} = {value}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{key} = {value}: {}", r.stderr);
    }
}

#[test]
fn fetch_from_npm_extracts_patterns_with_counts_and_checksums() {
    let p = Project::new();
    let pipe = |extract: &str| {
        format!(
            "[pipeline]\nname = \"npm\"\n\n[[step]]\nid = \"num\"\nkind = \"fetch\"\nregistry = \"npm\"\n\
             package = \"is-number\"\nversion = \"7.0.0\"\n\
             sha256 = \"7b75c1057198cf97696909a9bee176c9c5e9bcb5b03bf3ecef2f484defadd51e\"\n\
             extract = [{extract}]\n"
        )
    };
    p.write(
        "p.toml",
        &pipe(
            "{ path = \"package/*.js*\", to = \"code\", count = 2 }, \
             { path = \"package/index.js\", sha256 = \"04255e482e181687823a95b207802ddd32e746c65dce4c95a5176fc192735960\" }",
        ),
    );
    p.run(&["run", "p.toml", "--run-id", "ok"]).ok();
    let out = p.path().join("runs/npm/ok/num/out");
    assert!(out.join("code/index.js").is_file() && out.join("code/package.json").is_file());
    assert!(out.join("index.js").is_file());
    // A pattern that matches another number of files than `count`.
    p.write("p.toml", &pipe("{ path = \"package/*.js*\", count = 3 }"));
    let r = p.run(&["run", "p.toml"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("matched 2 files, expected 3"),
        "{}",
        r.stderr
    );
    // An extracted file whose sha256 is not the pinned one.
    p.write(
        "p.toml",
        &pipe(&format!(
            "{{ path = \"package/index.js\", sha256 = \"{}\" }}",
            "0".repeat(64)
        )),
    );
    let r = p.run(&["run", "p.toml"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("sha256 mismatch"), "{}", r.stderr);
}
