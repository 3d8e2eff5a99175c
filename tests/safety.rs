//! The runner never destroys what it did not create and never trusts a path or a size from a
//! pipeline: export targets, pipeline names and run ids, artifact references, cache reuse of
//! changed artifacts, and values no step can run with — each refused with exit code 2 and the
//! place it was written, or (at run time) a failed step that leaves the user's files alone.

mod common;

use common::Project;

/// A one-step pipeline exporting to `export`.
fn exporting(export: &str) -> String {
    format!(
        "[pipeline]\nname = \"ex\"\n\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"echo made > $RUNNER_OUT/a.txt\"\nexport = \"{export}\"\n"
    )
}

#[test]
fn export_targets_outside_the_root_or_over_what_matters_are_refused() {
    let p = Project::new();
    p.write("data/keep.txt", "user data\n");
    p.write("pipelines/x.toml", "");
    for (export, expect) in [
        (".", "not a folder inside the pipeline root"),
        ("./", "not a folder inside the pipeline root"),
        ("..", "not a folder inside the pipeline root"),
        ("../../somewhere", "not a folder inside the pipeline root"),
        ("/tmp/elsewhere", "absolute path"),
        ("runs", "overlaps the runs directory"),
        ("runs/ex", "overlaps the runs directory"),
        ("data", "overlaps the input"),
    ] {
        let mut text = exporting(export);
        if export == "data" {
            text = text.replace(
                "kind = \"command\"",
                "kind = \"command\"\ninputs = [\"data/keep.txt\"]",
            );
        }
        p.write("p.toml", &text);
        for cmd in ["validate", "run"] {
            let r = p.run(&[cmd, "p.toml"]);
            assert_eq!(r.code, 2, "{cmd} export = {export:?}: {}", r.stderr);
            assert!(
                r.stderr.contains("p.toml:")
                    && r.stderr.contains("`step.a.export`")
                    && r.stderr.contains(expect),
                "{cmd} export = {export:?}: {}",
                r.stderr
            );
        }
        assert_eq!(p.read("data/keep.txt"), "user data\n", "{export}");
        assert!(p.path().join("p.toml").is_file());
    }
    // A target that would hold the pipeline file itself.
    p.write(
        "pipelines/p.toml",
        &exporting("pipelines").replace("name = \"ex\"", "name = \"ex\"\nroot = \"..\""),
    );
    let r = p.run(&["validate", "pipelines/p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("contains the pipeline file"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_existing_folder_the_runner_did_not_create_is_never_replaced() {
    let p = Project::new();
    p.write("models/mine/precious.bin", "irreplaceable\n");
    p.write("p.toml", &exporting("models/mine"));
    let r = p.run(&["run", "p.toml"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("was not written by the runner") && r.stderr.contains(".runner-export"),
        "{}",
        r.stderr
    );
    assert_eq!(p.read("models/mine/precious.bin"), "irreplaceable\n");
    assert!(!p.path().join("models/mine/a.txt").exists());

    // A new folder: exported with the marker; a second run (cached) replaces its own export.
    p.write("p.toml", &exporting("models/new"));
    p.run(&["run", "p.toml"]).ok();
    assert_eq!(p.read("models/new/a.txt"), "made\n");
    let marker = p.read("models/new/.runner-export");
    assert!(marker.contains("\"step\": \"a\""), "{marker}");
    let r = p.run(&["run", "p.toml"]).ok();
    assert!(r.stdout.contains("cached"), "{}", r.stdout);
    assert_eq!(p.read("models/new/a.txt"), "made\n");
}

#[test]
fn names_and_run_ids_are_single_folder_names() {
    let p = Project::new();
    p.write(
        "p.toml",
        "[pipeline]\nname = \"../../x\"\n\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"true\"\n",
    );
    let r = p.run(&["run", "p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("p.toml:2:1: `pipeline.name`"),
        "{}",
        r.stderr
    );
    p.write(
        "p.toml",
        "[pipeline]\nname = \"ok\"\n\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"true\"\n",
    );
    for id in ["../../../x", "..", "a/b"] {
        let r = p.run(&["run", "p.toml", "--run-id", id]);
        assert_eq!(r.code, 2, "{id}: {}", r.stderr);
        assert!(r.stderr.contains("single folder name"), "{}", r.stderr);
    }
    let outside: Vec<_> = std::fs::read_dir(p.path().parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() == "x")
        .collect();
    assert!(outside.is_empty(), "a run directory escaped: {outside:?}");
    // An existing run id is refused; `resume` is the way to continue it.
    p.run(&["run", "p.toml", "--run-id", "r1"]).ok();
    let r = p.run(&["run", "p.toml", "--run-id", "r1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("runner resume"), "{}", r.stderr);
}

#[test]
fn artifact_references_stay_in_the_dependency_folder() {
    let p = Project::new();
    p.write(
        "p.toml",
        "[[step]]\nid = \"t\"\nkind = \"command\"\nrun = \"true\"\n\n[[step]]\nid = \"tok\"\nkind = \"tokenize\"\ndepends_on = [\"t\"]\ntokenizer = \"@t//etc\"\ninputs = [\"@t/../../x\"]\n",
    );
    let r = p.run(&["validate", "p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`step.tok.tokenizer`") && r.stderr.contains("`step.tok.inputs"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("must stay inside"), "{}", r.stderr);
}

#[test]
fn a_cached_artifact_changed_in_place_is_not_reused() {
    let p = Project::new();
    p.write(
        "p.toml",
        "[pipeline]\nname = \"c\"\n\n[[step]]\nid = \"a\"\nkind = \"command\"\nrun = \"echo a >> log.txt; echo 0123456789 > $RUNNER_OUT/a.txt\"\n\n[[step]]\nid = \"b\"\nkind = \"command\"\ndepends_on = [\"a\"]\nrun = \"echo b >> log.txt; cp $RUNNER_DEP_A/a.txt $RUNNER_OUT/b.txt\"\n",
    );
    p.run(&["run", "p.toml", "--run-id", "r1"]).ok();
    assert_eq!(p.read("log.txt"), "a\nb\n");
    // One byte changed, same size.
    let a = p.path().join("runs/c/r1/a/out/a.txt");
    std::fs::write(&a, "0123456789".replace('5', "X") + "\n").unwrap();
    let r = p.run(&["run", "p.toml", "--run-id", "r2"]).ok();
    assert!(
        r.stderr.contains("a.txt changed since it was written"),
        "{}",
        r.stderr
    );
    // `a` ran again and made what it made before, so `b` (keyed on `a`'s output) is reused.
    assert_eq!(p.read("log.txt"), "a\nb\na\n", "{}", r.stderr);
    assert_eq!(p.read("runs/c/r2/a/out/a.txt"), "0123456789\n");
    assert_eq!(p.read("runs/c/r2/b/out/b.txt"), "0123456789\n");
    // Intact now (r2's own copy): reused.
    p.run(&["run", "p.toml", "--run-id", "r3"]).ok();
    assert_eq!(p.read("log.txt"), "a\nb\na\n");
}

#[test]
fn values_no_step_can_run_with_are_refused_at_validation() {
    let p = Project::new();
    p.write(
        "p.toml",
        r#"[[step]]
id = "t"
kind = "command"
run = "true"

[[step]]
id = "tok"
kind = "tokenize"
depends_on = ["t"]
tokenizer = "@t"
inputs = ["@t"]
max_seq_len = 0
heldout = -0.5

[[step]]
id = "s2"
kind = "stage2"
depends_on = ["t"]
student = "@t"
teacher = "@t"
data = "@t"
temperature = 0.0
akl_head_mass = 2.0

[step.train]
lr_init = 0.0
micro_batch = 0
grad_accum = 0
max_tokens = 0
bucket = 0
mixer_lr_scale = 0.0
"#,
    );
    let r = p.run(&["validate", "p.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for key in [
        "p.toml:12:1: `step.tok.max_seq_len`",
        "p.toml:13:1: `step.tok.heldout`",
        "`step.s2.temperature`",
        "`step.s2.akl_head_mass`",
        "`step.s2.train.lr_init`",
        "`step.s2.train.micro_batch`",
        "`step.s2.train.grad_accum`",
        "`step.s2.train.max_tokens`",
        "`step.s2.train.bucket`",
        "`step.s2.train.mixer_lr_scale`",
    ] {
        assert!(r.stderr.contains(key), "{key} not reported:\n{}", r.stderr);
    }

    // Every type error of a table, not only the first.
    p.write(
        "q.toml",
        "[[step]]\nid = \"a\"\nkind = \"command\"\nrun = 3\nexclusive = \"yes\"\n",
    );
    let r = p.run(&["validate", "q.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`step.a.run`") && r.stderr.contains("`step.a.exclusive`"),
        "{}",
        r.stderr
    );

    // An empty pipeline, and an override that drops a step.
    p.write("empty.toml", "# nothing here\n");
    let r = p.run(&["validate", "empty.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no steps"), "{}", r.stderr);
    let r = p.run(&["run", "empty.toml"]);
    assert_eq!(r.code, 2);
    assert!(!p.path().join("runs/empty").exists());
    let r = p.run(&["validate", "q.toml", "--set", "step.a="]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("replace the whole step"), "{}", r.stderr);
}
