//! End-to-end tests of the runner on pipelines of `command` steps: validation, ordering,
//! caching, partial reruns, crash + resume, and the run-directory lock.

mod common;

use common::{Project, manifest};
use std::collections::BTreeMap;

/// Three steps: `a` -> `b`, and `c` alone. Each appends its id to `log.txt` when it runs.
const PIPELINE: &str = r#"
[pipeline]
name = "demo"
max_parallel = 1

[[step]]
id = "a"
kind = "command"
run = "echo a >> log.txt; tr a-z A-Z < input.txt > $RUNNER_OUT/a.txt"
inputs = ["input.txt"]
outputs = ["a.txt"]

[[step]]
id = "b"
kind = "command"
depends_on = ["a"]
run = "echo b >> log.txt; cat $RUNNER_DEP_A/a.txt $RUNNER_DEP_A/a.txt > $RUNNER_OUT/b.txt"
outputs = ["b.txt"]

[[step]]
id = "c"
kind = "command"
run = "echo c >> log.txt; echo seed=$RUNNER_SEED > $RUNNER_OUT/c.txt"
"#;

/// The outcome column of `step`'s row in a run's summary table.
fn outcome<'a>(stdout: &'a str, step: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        (cols.next() == Some(step)).then(|| cols.next()).flatten()
    })
}

fn demo() -> Project {
    let p = Project::new();
    p.write("input.txt", "hello\n");
    p.write("p.toml", PIPELINE);
    p
}

#[test]
fn validate_reports_every_mistake_with_its_line_and_exits_2() {
    let p = Project::new();
    p.write(
        "bad.toml",
        r#"[pipeline]
name = "bad"
sed = 3

[[step]]
id = "a"
kind = "comand"
run = "true"

[[step]]
id = "b"
kind = "command"
run = "true"
depends_on = ["aa"]
"#,
    );
    let r = p.run(&["validate", "bad.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("bad.toml:3:1: `pipeline.sed`: unknown key"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("did you mean `seed`?"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("bad.toml:7:1: `step.a.kind`: unknown step kind `comand`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("did you mean `command`?"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("bad.toml:14:1: `step.b.depends_on`: step `b` depends on unknown step `aa`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("3 errors"), "{}", r.stderr);
}

#[test]
fn validate_prints_the_cycle() {
    let p = Project::new();
    p.write(
        "cycle.toml",
        r#"[[step]]
id = "stage2"
kind = "command"
run = "true"
depends_on = ["sft"]

[[step]]
id = "sft"
kind = "command"
run = "true"
depends_on = ["stage2"]
"#,
    );
    let r = p.run(&["validate", "cycle.toml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("dependency cycle: stage2 -> sft -> stage2"),
        "{}",
        r.stderr
    );
}

#[test]
fn unavailable_device_and_impossible_grpo_settings_are_configuration_errors() {
    let p = Project::new();
    p.write("s/x.txt", "x");
    p.write(
        "problems.jsonl",
        "{\"question\": \"1+1?\", \"answer\": 2}\n",
    );
    p.write(
        "p.toml",
        r#"[pipeline]
device = "cuda"

[[step]]
id = "grpo"
kind = "grpo"
student = "s"
problems = "problems.jsonl"
steps = 3
group_size = 1
temperature = 0.0

[step.rewards]
boxed = -1.0
"#,
    );
    let r = p.run(&["validate", "p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in [
        "p.toml:2:",
        "device `cuda` is not available",
        "group_size must be ≥ 2",
        "temperature must be > 0",
        "rewards.boxed must be a finite number ≥ 0",
    ] {
        assert!(
            r.stderr.contains(want),
            "missing {want:?} in:\n{}",
            r.stderr
        );
    }
}

#[test]
fn sft_kl_term_and_replay_are_validated() {
    let p = Project::new();
    p.write("s/x.txt", "x");
    p.write("d/x.txt", "x");
    let sft = |extra: &str| {
        format!(
            r#"[[step]]
id = "sft"
kind = "sft"
student = "s"
data = "d"
{extra}

[step.train]
lr_init = 1e-4
max_tokens = 1000
"#
        )
    };
    // Validates the step with `extra`: the exit code, and what the errors must say.
    let check = |extra: &str, code: i32, says: &[&str]| {
        p.write("p.toml", &sft(extra));
        let r = p.run(&["validate", "p.toml"]);
        assert_eq!(r.code, code, "{extra}: {}", r.stderr);
        for s in says {
            assert!(r.stderr.contains(s), "{extra}: no {s:?} in {}", r.stderr);
        }
    };
    check("kl_weight = 0.5", 2, &["kl_weight = 0.5 needs a teacher"]);
    check(
        "teacher = \"s\"\nkl_weight = -1.0",
        2,
        &["kl_weight must be ≥ 0"],
    );
    check("teacher = \"s\"\nkl_weight = 0.5", 0, &[]);
    // Replay: its share of the tokens must be a fraction, and its data must exist.
    check(
        "replay = \"d\"\nreplay_fraction = 1.0",
        2,
        &["replay_fraction", "got 1"],
    );
    check("replay = \"nowhere\"", 2, &["nowhere"]);
    check("replay = \"d\"\nreplay_fraction = 0.3", 0, &[]);
}

#[test]
fn validate_reports_wrong_types_missing_inputs_duplicate_ids_and_exports() {
    let p = Project::new();
    p.write(
        "p.toml",
        r#"[[step]]
id = "a"
kind = "command"
run = 5
export = "out"

[[step]]
id = "b"
kind = "command"
run = "true"
inputs = ["nope.txt"]
export = "out"

[[step]]
id = "b"
kind = "command"
run = "true"
"#,
    );
    let r = p.run(&["validate", "p.toml"]);
    assert_eq!(r.code, 2);
    let e = &r.stderr;
    assert!(
        e.contains("p.toml:4:1: `step.a.run`: invalid type: integer `5`, expected a string"),
        "{e}"
    );
    assert!(
        e.contains("p.toml:11:1: `step.b.inputs`: input `nope.txt` does not exist"),
        "{e}"
    );
    assert!(
        e.contains("p.toml:15:1") && e.contains("duplicate step id `b`"),
        "{e}"
    );
    // `a` failed to type, so only `b` exports; a clean pair shows the export clash:
    let p2 = Project::new();
    p2.write("q.toml", "[[step]]\nid=\"a\"\nkind=\"command\"\nrun=\"true\"\nexport=\"o\"\n[[step]]\nid=\"b\"\nkind=\"command\"\nrun=\"true\"\nexport=\"./o\"\n");
    let r = p2.run(&["validate", "q.toml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("q.toml:10:1") && r.stderr.contains("steps `a` and `b` both write to"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_override_is_reported_as_coming_from_the_command_line() {
    let p = demo();
    let r = p.run(&[
        "validate",
        "p.toml",
        "--set",
        "step.a.outputs=3",
        "--set",
        "step.zz.run=x",
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("error: --set step.zz.run=x: no step with id `zz`"),
        "{}",
        r.stderr
    );
    let r = p.run(&["validate", "p.toml", "--set", "step.a.outputs=3"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("--set step.a.outputs=3: `step.a.outputs`: invalid type"),
        "{}",
        r.stderr
    );
}

#[test]
fn run_executes_in_order_then_reuses_everything() {
    let p = demo();
    let r = p.run(&["run", "p.toml"]).ok();
    assert!(r.stdout.contains("run directory:"), "{}", r.stdout);
    let log = p.read("log.txt");
    let order: Vec<&str> = log.lines().collect();
    assert_eq!(order.len(), 3);
    assert!(order.iter().position(|s| *s == "a") < order.iter().position(|s| *s == "b"));
    let run1 = p.runs("demo")[0].clone();
    assert_eq!(
        std::fs::read_to_string(run1.join("b/out/b.txt")).unwrap(),
        "HELLO\nHELLO\n"
    );
    assert_eq!(
        std::fs::read_to_string(run1.join("c/out/c.txt")).unwrap(),
        "seed=0\n"
    );
    assert!(run1.join("pipeline.toml").exists() && run1.join("run.log").exists());
    assert_eq!(manifest(&run1.join("a"))["status"], "complete");

    let r = p.run(&["run", "p.toml"]).ok();
    assert_eq!(p.read("log.txt"), log, "nothing reran");
    for step in ["a", "b", "c"] {
        assert!(
            r.stdout.contains(&format!("{step:<4}  cached")),
            "{}",
            r.stdout
        );
    }
    let run2 = p.runs("demo")[1].clone();
    assert_eq!(
        std::fs::read_to_string(run2.join("b/out/b.txt")).unwrap(),
        "HELLO\nHELLO\n"
    );

    let plan = p.run(&["plan", "p.toml"]).ok();
    assert!(
        plan.stdout.contains("0 of 3 steps would run"),
        "{}",
        plan.stdout
    );
}

#[test]
fn editing_a_step_reruns_it_and_its_dependents_only() {
    let p = demo();
    p.run(&["run", "p.toml"]).ok();
    std::fs::write(p.path().join("log.txt"), "").unwrap();
    let edited = PIPELINE.replace("tr a-z A-Z < input.txt", "tr a-z A-Z < input.txt | rev");
    p.write("p.toml", &edited);

    let plan = p.run(&["plan", "p.toml"]).ok();
    assert!(
        plan.stdout.contains("setting `run` changed"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("c     cached") || plan.stdout.contains("c  cached"),
        "{}",
        plan.stdout
    );

    p.run(&["run", "p.toml"]).ok();
    assert_eq!(p.read("log.txt"), "a\nb\n");
    let run2 = p.runs("demo")[1].clone();
    assert_eq!(
        std::fs::read_to_string(run2.join("b/out/b.txt")).unwrap(),
        "OLLEH\nOLLEH\n"
    );

    // An override on the command line is an edit too, and lands in the resolved config.
    std::fs::write(p.path().join("log.txt"), "").unwrap();
    p.run(&["run", "p.toml", "--set", "pipeline.seed=9"]).ok();
    assert_eq!(
        p.read("log.txt"),
        "a\nb\nc\n",
        "every step receives the seed, so every key includes it"
    );
}

#[test]
fn until_only_and_force_select_steps() {
    let p = demo();
    let r = p.run(&["run", "p.toml", "--until", "a"]).ok();
    assert!(r.stdout.contains("not selected"), "{}", r.stdout);
    assert_eq!(p.read("log.txt"), "a\n");
    let r = p.run(&["run", "p.toml", "--only", "b"]).ok();
    assert_eq!(outcome(&r.stdout, "a"), Some("cached"), "{}", r.stdout);
    assert_eq!(outcome(&r.stdout, "b"), Some("ran"), "{}", r.stdout);
    assert_eq!(p.read("log.txt"), "a\nb\n");
    p.run(&["run", "p.toml", "--force", "a"]).ok();
    assert_eq!(
        p.read("log.txt"),
        "a\nb\na\nc\n",
        "forced a reran; b is cached since a's output is unchanged"
    );
    p.run(&["run", "p.toml", "--from", "a"]).ok();
    assert_eq!(p.read("log.txt"), "a\nb\na\nc\na\nb\n");
    let r = p.run(&["run", "p.toml", "--only", "bb"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `b`?"), "{}", r.stderr);
}

#[test]
fn a_failed_step_stops_the_run_and_resume_continues_after_the_fix() {
    let p = Project::new();
    p.write(
        "p.toml",
        r#"[pipeline]
max_parallel = 1
[[step]]
id = "a"
kind = "command"
run = "echo a >> log.txt; echo A > $RUNNER_OUT/a"
[[step]]
id = "b"
kind = "command"
depends_on = ["a"]
run = "test -f fixed || { echo 'not fixed yet' >&2; exit 3; }; echo b >> log.txt; echo B > $RUNNER_OUT/b"
[[step]]
id = "c"
kind = "command"
depends_on = ["b"]
run = "echo c >> log.txt"
"#,
    );
    let r = p.run(&["run", "p.toml"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("step `b` failed"), "{}", r.stderr);
    assert!(r.stderr.contains("not fixed yet"), "{}", r.stderr);
    assert!(r.stderr.contains("runner resume"), "{}", r.stderr);
    let status = p.run(&["status"]).ok();
    assert!(status.stdout.contains("failed"), "{}", status.stdout);
    p.write("fixed", "");
    p.run(&["resume"]).ok();
    assert_eq!(p.read("log.txt"), "a\nb\nc\n");

    // A run started with --force that fails later: resume finishes the same selection — the
    // forced step is not redone (it completed in this run), the failed one reruns, nothing
    // comes from the cache instead of the forced work.
    std::fs::remove_file(p.path().join("fixed")).unwrap();
    let r = p.run(&["run", "p.toml", "--force", "a", "--force", "b"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(p.read("log.txt"), "a\nb\nc\na\n");
    p.write("fixed", "");
    p.run(&["resume"]).ok();
    assert_eq!(
        p.read("log.txt"),
        "a\nb\nc\na\nb\n",
        "b forced and rerun; a not again; c cached"
    );
}

#[test]
fn kill_9_then_resume_finishes_without_rerunning_completed_steps() {
    let p = Project::new();
    p.write(
        "p.toml",
        r#"[pipeline]
name = "crash"
max_parallel = 1
[[step]]
id = "a"
kind = "command"
run = "echo a >> log.txt; head -c 100000 /dev/urandom > $RUNNER_OUT/blob"
[[step]]
id = "slow"
kind = "command"
depends_on = ["a"]
# First attempt: leave a mark in the checkpoint folder and hang. Second: finish.
run = """
if [ -f "$RUNNER_CHECKPOINT_DIR/started" ]; then
  echo resumed > "$RUNNER_OUT/slow.txt"
else
  touch "$RUNNER_CHECKPOINT_DIR/started"; exec sleep 60
fi
"""
[[step]]
id = "after"
kind = "command"
depends_on = ["slow"]
run = "cat $RUNNER_DEP_SLOW/slow.txt > $RUNNER_OUT/after.txt"
"#,
    );
    let mut child = p.spawn(&["run", "p.toml", "-q"]);
    p.wait_for(30, "the slow step to start", || {
        p.runs("crash")
            .first()
            .is_some_and(|r| r.join("slow/checkpoint/started").exists())
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let run = p.runs("crash")[0].clone();
    let blob_before = std::fs::read(run.join("a/out/blob")).unwrap();

    let status = p.run(&["status", run.to_str().unwrap()]).ok();
    assert!(status.stdout.contains("interrupted"), "{}", status.stdout);

    let r = p.run(&["resume", "-q"]).ok();
    assert_eq!(outcome(&r.stdout, "a"), Some("complete"), "{}", r.stdout);
    assert_eq!(p.read("log.txt"), "a\n", "a did not rerun");
    assert_eq!(std::fs::read(run.join("a/out/blob")).unwrap(), blob_before);
    assert_eq!(
        std::fs::read_to_string(run.join("after/out/after.txt")).unwrap(),
        "resumed\n"
    );

    // Every artifact matches the checksum in its manifest.
    for step in ["a", "slow", "after"] {
        let m = manifest(&run.join(step));
        assert_eq!(m["status"], "complete", "{step}");
        for f in m["outputs"].as_array().unwrap() {
            let path = run.join(step).join("out").join(f["path"].as_str().unwrap());
            let bytes = std::fs::read(&path).unwrap();
            use sha2::Digest;
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&bytes)),
                f["sha256"].as_str().unwrap()
            );
        }
    }
    let status = p.run(&["status", run.to_str().unwrap()]).ok();
    assert!(status.stdout.contains("complete"), "{}", status.stdout);
}

#[test]
fn a_second_runner_on_the_same_run_dir_is_refused() {
    let p = Project::new();
    p.write("p.toml", "[pipeline]\nname = \"lock\"\n[[step]]\nid = \"s\"\nkind = \"command\"\nrun = \"touch started; sleep 3\"\n");
    let mut first = p.spawn(&["run", "p.toml", "--run-id", "r1", "-q"]);
    p.wait_for(30, "the first runner's step", || {
        p.path().join("started").exists()
    });
    let r = p.run(&["resume", "runs/lock/r1"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("is in use by another runner (pid"),
        "{}",
        r.stderr
    );
    // An existing run id is never reused by `run` (only `resume` continues a run).
    let r = p.run(&["run", "p.toml", "--run-id", "r1"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert!(first.wait().unwrap().success());
}

#[test]
fn dag_renders_text_dot_and_mermaid() {
    let p = demo();
    let t = p.run(&["dag", "p.toml"]).ok().stdout;
    assert!(t.contains("  b  [command]  <- a"), "{t}");
    let d = p.run(&["dag", "p.toml", "--dot"]).ok().stdout;
    assert!(d.contains("\"a\" -> \"b\";"), "{d}");
    let m = p.run(&["dag", "p.toml", "--mermaid"]).ok().stdout;
    assert!(m.contains("a --> b"), "{m}");
}

#[test]
fn extends_and_environment_layers_apply_in_order() {
    let p = demo();
    p.write(
        "child.toml",
        "extends = \"p.toml\"\n[pipeline]\nname = \"child\"\nseed = 4\n",
    );
    let resolved = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = p.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let runs = p.runs("child");

        std::fs::read_to_string(runs.last().unwrap().join("c/out/c.txt")).unwrap()
    };
    assert_eq!(resolved(&["run", "child.toml"], &[]), "seed=4\n");
    assert_eq!(
        resolved(&["run", "child.toml"], &[("RUNNER_PIPELINE__SEED", "5")]),
        "seed=5\n"
    );
    assert_eq!(
        resolved(
            &["run", "child.toml", "--set", "pipeline.seed=6"],
            &[("RUNNER_PIPELINE__SEED", "5")]
        ),
        "seed=6\n"
    );
    let cfg =
        std::fs::read_to_string(p.runs("child").last().unwrap().join("pipeline.toml")).unwrap();
    let parsed: toml::Table = toml::from_str(&cfg).unwrap();
    assert_eq!(parsed["pipeline"]["seed"].as_integer(), Some(6));
    let ids: Vec<&str> = parsed["step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
    let _unused: BTreeMap<(), ()> = BTreeMap::new();
}

#[test]
fn every_shipped_pipeline_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    // Every file in pipelines/ except the shared recipe (not runnable alone: it names steps
    // that a pipeline extending it provides), and the dataset pipeline.
    let mut files: Vec<String> = std::fs::read_dir(root.join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".toml") && f != "recipe.toml")
        .map(|f| format!("pipelines/{f}"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    files.push("datasets/text.toml".into());
    for file in &files {
        let path = root.join(file);
        let r = p.run(&["validate", path.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{file}: {}", r.stderr);
        assert!(r.stdout.contains(": ok ("), "{file}: {}", r.stdout);
    }
}

#[test]
fn cached_artifacts_are_hard_links_not_copies() {
    use std::os::unix::fs::MetadataExt;
    let p = demo();
    p.run(&["run", "p.toml", "--run-id", "r1"]).ok();
    let r = p.run(&["run", "p.toml", "--run-id", "r2"]).ok();
    assert_eq!(outcome(&r.stdout, "a"), Some("cached"), "{}", r.stdout);
    let ino = |run: &str| {
        std::fs::metadata(p.path().join(format!("runs/demo/{run}/a/out/a.txt")))
            .unwrap()
            .ino()
    };
    assert_eq!(ino("r1"), ino("r2"), "the cached file is the same inode");
}

#[test]
fn max_parallel_bounds_how_many_steps_run_at_once() {
    // Two independent steps that each take 0.6 s and record when they ran (their commands differ
    // from each other and between the two settings, so nothing comes from the cache).
    let p = Project::new();
    let pipe = |n: usize| {
        format!(
            "[pipeline]\nname = \"par{n}\"\nmax_parallel = {n}\n\n\
             [[step]]\nid = \"x\"\nkind = \"command\"\nrun = \"date +%s.%N > $RUNNER_OUT/start; sleep 0.6; date +%s.%N > $RUNNER_OUT/end # x{n}\"\n\n\
             [[step]]\nid = \"y\"\nkind = \"command\"\nrun = \"date +%s.%N > $RUNNER_OUT/start; sleep 0.6; date +%s.%N > $RUNNER_OUT/end # y{n}\"\n"
        )
    };
    let span = |n: usize, step: &str| -> (f64, f64) {
        let dir = p.path().join(format!("runs/par{n}/r/{step}/out"));
        let t = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .trim()
                .parse::<f64>()
                .unwrap()
        };
        (t("start"), t("end"))
    };
    for n in [1, 2] {
        p.write("p.toml", &pipe(n));
        p.run(&["run", "p.toml", "--run-id", "r"]).ok();
        let (x, y) = (span(n, "x"), span(n, "y"));
        let overlap = x.0 < y.1 && y.0 < x.1;
        assert_eq!(overlap, n == 2, "max_parallel = {n}: x {x:?}, y {y:?}");
    }
}

/// `device = "tch"` in a build without LibTorch: a configuration error that says how to get it.
#[cfg(not(feature = "tch"))]
#[test]
fn libtorch_device_needs_the_tch_build() {
    let p = Project::new();
    p.write(
        "p.toml",
        "[pipeline]\nname = \"p\"\ndevice = \"tch\"\n\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"true\"\n",
    );
    let r = p.run(&["validate", "p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("device `tch` is not available"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--features tch"), "{}", r.stderr);
    let r = p.run(&["generate", "--model", "m", "--device", "tch", "hi"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--features tch"), "{}", r.stderr);
}

/// `device = "wgpu"` in a build without the GPU backend says which feature to build with; a
/// misspelt device names the ones that exist, with its line.
#[test]
fn gpu_device_needs_the_wgpu_build_and_bad_names_are_rejected() {
    let p = Project::new();
    let pipeline = |device: &str| {
        format!(
            "[pipeline]\nname = \"p\"\ndevice = \"{device}\"\n\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"true\"\n"
        )
    };
    p.write("bad.toml", &pipeline("wgpu:x"));
    let r = p.run(&["validate", "bad.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unknown device `wgpu:x`"), "{}", r.stderr);
    assert!(r.stderr.contains("bad.toml:3"), "{}", r.stderr);
    if cfg!(feature = "wgpu") {
        return;
    }
    p.write("p.toml", &pipeline("wgpu:1"));
    let r = p.run(&["validate", "p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("device `wgpu:1` is not available"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--features wgpu"), "{}", r.stderr);
    let r = p.run(&["bench", "wkv", "--device", "wgpu", "--quick"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--features wgpu"), "{}", r.stderr);
}

#[test]
fn slurm_executor_and_resources_are_checked_with_their_lines() {
    let p = Project::new();
    p.write(
        "p.toml",
        r#"[pipeline]
name = "cluster"

[pipeline.executor]
kind = "slurm"
partition = "gpu\n#SBATCH --uid=0"
sbatch_args = ["--output=/etc/x", "--constraint=a100"]
poll_secs = 0

[[step]]
id = "a"
kind = "command"
run = "true"

[step.resources]
cpus_per_task = 0
mem = "lots"
time = "2h"

[[step]]
id = "b"
kind = "command"
run = "true"
resources = { gpus = 1 }

[[step]]
id = "c"
kind = "command"
run = "true"
resources = { tasks_per_node = 2 }
"#,
    );
    let r = p.run(&["validate", "p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in [
        "p.toml:6:",
        "`pipeline.executor.partition`",
        "is not a Slurm name",
        "p.toml:7:",
        "`--output` is set by the runner",
        "p.toml:8:",
        "must be between 0.1 and 3600 seconds",
        "p.toml:16:",
        "`step.a.resources.cpus_per_task`",
        "p.toml:17:",
        "not a Slurm memory size",
        "p.toml:18:",
        "not a Slurm time limit",
        "p.toml:24:",
        "`step.b.resources.gpus`: unknown key",
        "did you mean `gpus_per_node`?",
    ] {
        assert!(
            r.stderr.contains(want),
            "missing {want:?} in:\n{}",
            r.stderr
        );
    }
    let r = p.run(&[
        "validate",
        "p.toml",
        "--set",
        "pipeline.executor.kind=\"pbs\"",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("pipeline.executor.kind"), "{}", r.stderr);
}

/// An `eval` report as `command` steps stand in for it: the final student converted `layers`
/// of 4, with `ppl` as its perplexity ratio and `speed` × the teacher's decode speed at 64
/// tokens of context.
fn report_json(layers: &str, ppl: f64, speed: f64) -> String {
    let at = |tok_s: f64, mib: f64| {
        format!(
            r#"{{"context":64,"prefill_s":0.1,"decode_tok_s":{tok_s},"state_mib":{mib},"recurrent_mib":0,"peak_rss_mib":null}}"#
        )
    };
    format!(
        r#"{{"pipeline":"t","teacher":"@t","student":"@s","student_description":"RWKV-7 in layers {layers} of 4",
"heldout":{{"batches":1,"batch_size":1,"teacher_perplexity":10,"models":[{{"name":"final","perplexity":{p},"perplexity_ratio":{ppl},"kl":0.1,"top1":0.9}}]}},
"math":{{}},"grpo":[],"generations":[],"speed":[{{"context":64,"teacher":{t},"student":{s}}}],"curves":[]}}"#,
        p = 10.0 * ppl,
        t = at(100.0, 8.0),
        s = at(100.0 * speed, 4.0),
    )
}

#[test]
fn compare_puts_students_side_by_side_with_their_training_time() {
    let p = Project::new();
    p.write("few.json", &report_json("[1]", 1.05, 1.1));
    p.write("many.json", &report_json("[0, 1, 2, 3]", 1.4, 1.6));
    p.write(
        "p.toml",
        r#"
[pipeline]
name = "cmp"

[[step]]
id = "train"
kind = "command"
run = "sleep 1"

[[step]]
id = "eval_few"
kind = "command"
run = "cp few.json $RUNNER_OUT/report.json"
inputs = ["few.json"]

[[step]]
id = "eval_many"
kind = "command"
run = "cp many.json $RUNNER_OUT/report.json"
inputs = ["many.json"]

[[step]]
id = "tradeoff"
kind = "compare"
depends_on = ["train", "eval_few", "eval_many"]
title = "Few or many"
students = [
  { name = "one layer", report = "@eval_few", training = ["@train"] },
  { name = "all layers", report = "@eval_many" },
]
"#,
    );
    p.run(&["run", "p.toml"]).ok();
    let run = p.runs("cmp")[0].clone();
    let md = std::fs::read_to_string(run.join("tradeoff/out/comparison.md")).unwrap();
    assert!(md.starts_with("# Few or many"), "{md}");
    let row = md
        .lines()
        .find(|l| l.starts_with("| one layer |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(
        row.starts_with("| one layer | 1/4 | 1.050 | 0.1000 | 90.0% | 1.10× | 0.50× |"),
        "{row}"
    );
    // The training step slept a second; its time is read from its manifest.
    let train_s: f64 = row
        .trim_end_matches(" s |")
        .rsplit("| ")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1.0..30.0).contains(&train_s), "{row}");
    assert!(md.contains("| all layers | 4/4 | 1.400 |"), "{md}");
    assert!(
        md.contains("| 1.60× | 0.50× | – |"),
        "no training listed: {md}"
    );
    assert!(
        md.contains("at 64 tokens of context): one layer, all layers."),
        "both are on the Pareto front: {md}"
    );
    let page = std::fs::read_to_string(run.join("tradeoff/out/comparison.html")).unwrap();
    assert!(page.contains("<polyline"), "the front is drawn");

    // A report that does not say which layers were converted fails the step, naming it.
    p.write(
        "many.json",
        &report_json("of some", 1.4, 1.6).replace("RWKV-7 in layers", "?"),
    );
    let r = p.run(&["run", "p.toml"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the report of `all layers` does not say which layers"),
        "{}",
        r.stderr
    );

    // Two students with one name is a configuration error with its line.
    p.write(
        "p.toml",
        &std::fs::read_to_string(p.path().join("p.toml"))
            .unwrap()
            .replace("\"all layers\"", "\"one layer\""),
    );
    let r = p.run(&["validate", "p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the name `one layer` is given to two students"),
        "{}",
        r.stderr
    );
}
