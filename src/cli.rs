//! Command-line interface: `runner run | resume | plan | dag | validate | status | generate | chat | bench`.

use crate::error::Error;
use crate::pipeline::executor::{Executor, Outcome, StepReport};
use crate::pipeline::graph::StepGraph;
use crate::pipeline::layers::Overrides;
use crate::pipeline::plan::{self, PlanEntry};
use crate::pipeline::rundir::{self, RunDir, RunRecord, RunStatus, StepStatus};
use crate::pipeline::select::{Scope, Selection};
use crate::pipeline::{self, Pipeline, keys, render};
use crate::progress;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Turn transformer LLMs into RWKV-7 hybrids with declarative, resumable pipelines.
///
/// A pipeline file (TOML) lists steps and their dependencies. `runner run` executes them in
/// order in a new run directory (`runs/<pipeline>/<run-id>/`), reusing the artifacts of any
/// step whose kind, settings and inputs are unchanged since an earlier run. After a crash or
/// `kill -9`, `runner resume` continues where the run stopped.
///
/// Exit codes: 0 success, 1 a step failed (or another runtime error), 2 bad usage or configuration.
#[derive(Debug, Parser)]
#[command(name = "runner", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where run directories live (default: `runs/` under the pipeline root; for `resume` and
    /// `status` without a run directory: `./runs`).
    #[arg(long, global = true, env = "RUNNER_RUNS_DIR")]
    runs_dir: Option<PathBuf>,
    /// Only warnings and errors on stderr; no progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline in a new run directory.
    Run {
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Name of the run directory (default: the UTC time, e.g. 20261128-211400).
        #[arg(long)]
        run_id: Option<String>,
    },
    /// Continue an interrupted or failed run; completed steps are not rerun.
    Resume {
        /// The run directory (default: the newest unfinished run under --runs-dir).
        run_dir: Option<PathBuf>,
    },
    /// Show what `run` would do for each step, and why (cached / changed / new).
    Plan {
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Print the step graph.
    Dag {
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
        /// Graphviz DOT output.
        #[arg(long, conflicts_with = "mermaid")]
        dot: bool,
        /// Mermaid flowchart output.
        #[arg(long)]
        mermaid: bool,
    },
    /// Check a pipeline file and report every problem at once.
    Validate {
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Show the state of a run's steps.
    Status {
        /// The run directory (default: the newest run under --runs-dir).
        run_dir: Option<PathBuf>,
    },
    /// Complete a prompt with a model directory (chat template by default), streaming the text.
    Generate(crate::commands::generate::GenerateArgs),
    /// Chat in the terminal with a teacher or student directory (streaming; state kept between
    /// turns; /clear resets it).
    Chat(crate::commands::chat::ChatArgs),
    /// Serve a model directory over HTTP: a chat page at `/` and an OpenAI-compatible
    /// `/v1/chat/completions` (streaming or not).
    Serve(crate::commands::serve::ServeArgs),
    /// Benchmarks, each side by side with a reference, with peak memory.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Tokenisation throughput of the tokenize step's code path vs the Python `tokenizers`
    /// library (encode_batch) on the same texts and tokenizer.json.
    Tokenize {
        /// A model directory with tokenizer.json.
        #[arg(long)]
        tokenizer: PathBuf,
        /// A data file or folder (*.txt, *.jsonl, *.parquet, datasets folder).
        #[arg(long)]
        input: PathBuf,
        /// Fields holding text, tried in order.
        #[arg(long, value_delimiter = ',', default_values_t = ["text".to_string()])]
        text_fields: Vec<String>,
        /// Timed repetitions (median).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Python interpreter with `tokenizers` for the reference column.
        #[arg(long, env = "RUNNER_PYTHON", default_value = "python3")]
        python: String,
    },
    /// Time of one stage-2 optimizer step (teacher forward, hybrid student forward and
    /// backward through the full-vocabulary KL, AdamW) on a fixed batch, vs the same model and
    /// loss in PyTorch eager.
    Stage2 {
        /// The teacher model directory.
        #[arg(long)]
        model: PathBuf,
        /// Layers to convert: `all`, or a comma-separated list of indices.
        #[arg(long, default_value = "6,12,18,24")]
        layers: String,
        /// Sequences per step.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 512)]
        seq: usize,
        /// Timed steps (median), after one warm-up step.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Python with torch and transformers for the reference (skipped when missing).
        #[arg(long, env = "RUNNER_PYTHON", default_value = "python3")]
        python: String,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Decode speed and state memory of a teacher vs its hybrid student (mixers initialised
    /// from the teacher in the chosen layers) at growing context lengths.
    Hybrid {
        /// The teacher model directory.
        #[arg(long)]
        model: PathBuf,
        /// Layers to convert: `all`, or a comma-separated list of indices.
        #[arg(long, default_value = "all")]
        layers: String,
        /// Context lengths (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [256usize, 1024, 4096])]
        contexts: Vec<usize>,
        /// Tokens decoded after each context.
        #[arg(long, default_value_t = 16)]
        new_tokens: usize,
        /// Timed decode repetitions (median).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Prefill and decode tokens/s of a model directory vs Hugging Face transformers (PyTorch
    /// eager, float32) on the same weights and prompt, with peak memory of each.
    Generate {
        /// A model directory in Hugging Face layout.
        #[arg(long)]
        model: PathBuf,
        /// Prompt lengths to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [128usize, 512])]
        prompt_tokens: Vec<usize>,
        /// Tokens decoded after each prompt.
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// Timed repetitions (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Python interpreter with torch and transformers for the reference column.
        #[arg(long, env = "RUNNER_PYTHON", default_value = "python3")]
        python: String,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// WKV-7 recurrence: Burn reference vs fused CPU op vs PyTorch eager per-token loop,
    /// forward and forward+backward, at B=4 T=1024 H=9 and B=2 T=2048 H=14 (N=64).
    Wkv {
        /// Timed repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Python interpreter with torch for the PyTorch column.
        #[arg(long, env = "RUNNER_PYTHON", default_value = "python3")]
        python: String,
        /// Skip the Burn tensor-op reference (slow at these sizes).
        #[arg(long)]
        no_reference: bool,
        /// Only the first shape.
        #[arg(long)]
        quick: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Override a setting: `--set step.stage1.lr=1e-4`, `--set pipeline.seed=7` (repeatable).
    /// Environment variables `RUNNER_<SECTION>__<KEY>` (e.g. `RUNNER_PIPELINE__SEED=7`) apply too;
    /// `--set` wins over the environment, which wins over the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Debug, Args)]
struct SelectArgs {
    /// Rerun this step and everything downstream of it.
    #[arg(long, value_name = "STEP")]
    from: Vec<String>,
    /// Run this step and what it depends on, nothing after it.
    #[arg(long, value_name = "STEP")]
    until: Vec<String>,
    /// Run only this step (its dependencies must be complete or cached).
    #[arg(long, value_name = "STEP")]
    only: Vec<String>,
    /// Rerun this step even if cached.
    #[arg(long, value_name = "STEP")]
    force: Vec<String>,
}

impl SelectArgs {
    fn selection(&self) -> Selection {
        Selection {
            from: self.from.clone(),
            until: self.until.clone(),
            only: self.only.clone(),
            force: self.force.clone(),
        }
    }
}

pub fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    progress::init(cli.quiet);
    let runs_dir = cli.runs_dir.as_deref();
    match &cli.command {
        Command::Run {
            file,
            config,
            select,
            run_id,
        } => run(file, config, select, run_id.as_deref(), runs_dir),
        Command::Resume { run_dir } => resume(run_dir.as_deref(), runs_dir),
        Command::Plan {
            file,
            config,
            select,
        } => plan_cmd(file, config, select, runs_dir),
        Command::Dag {
            file,
            config,
            dot,
            mermaid,
        } => {
            let p = load(file, config)?;
            let g = pipeline::graph_of(&p);
            let text = if *dot {
                render::dot(&p, &g)
            } else if *mermaid {
                render::mermaid(&p, &g)
            } else {
                render::ascii(&p, &g)
            };
            print!("{text}");
            Ok(())
        }
        Command::Validate { file, config } => {
            let p = load(file, config)?;
            println!("{}: ok ({} steps)", file.display(), p.steps.len());
            Ok(())
        }
        Command::Status { run_dir } => status(run_dir.as_deref(), runs_dir),
        Command::Generate(args) => crate::commands::generate::run(args, cli.quiet),
        Command::Chat(args) => crate::commands::chat::run(args, cli.quiet),
        Command::Serve(args) => crate::commands::serve::run(args),
        Command::Bench(BenchCommand::Tokenize {
            tokenizer,
            input,
            text_fields,
            reps,
            python,
        }) => bench_tokenize(tokenizer, input, text_fields, *reps, python),
        Command::Bench(BenchCommand::Stage2 {
            model,
            layers,
            batch,
            seq,
            steps,
            python,
            json,
        }) => bench_stage2(model, layers, *batch, *seq, *steps, python, json.as_deref()),
        Command::Bench(BenchCommand::Hybrid {
            model,
            layers,
            contexts,
            new_tokens,
            reps,
            json,
        }) => bench_hybrid(model, layers, contexts, *new_tokens, *reps, json.as_deref()),
        Command::Bench(BenchCommand::Generate {
            model,
            prompt_tokens,
            new_tokens,
            reps,
            python,
            json,
        }) => bench_generate(
            model,
            prompt_tokens,
            *new_tokens,
            *reps,
            python,
            json.as_deref(),
        ),
        Command::Bench(BenchCommand::Wkv {
            reps,
            python,
            no_reference,
            quick,
            json,
        }) => bench_wkv(*reps, python, *no_reference, *quick, json.as_deref()),
    }
}

fn bench_tokenize(
    tok_dir: &Path,
    input: &Path,
    fields: &[String],
    reps: usize,
    python: &str,
) -> Result<(), Error> {
    use crate::bench::tokenize::{load_texts, measure_ours, measure_python};
    let tok = crate::text::TextTokenizer::from_dir(tok_dir)
        .map_err(|e| Error::Usage(format!("error: {e:#}")))?;
    let texts = load_texts(input, fields).map_err(|e| Error::Usage(format!("error: {e:#}")))?;
    let bytes: usize = texts.iter().map(String::len).sum();
    println!(
        "{} texts, {:.1} MB, {} threads",
        texts.len(),
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );
    let ours = measure_ours(&tok, &texts, reps);
    println!(
        "  runner (tokenize step path)  {:>10} tokens  {:>8.3} s  {:>10.0} tok/s  peak RSS {:>6.0} MiB",
        ours.tokens, ours.seconds, ours.tokens_per_s, ours.peak_rss_mib
    );
    match measure_python(python, &tok_dir.join("tokenizer.json"), &texts, reps) {
        Ok(py) => {
            println!(
                "  python tokenizers            {:>10} tokens  {:>8.3} s  {:>10.0} tok/s  peak RSS {:>6.0} MiB",
                py.tokens, py.seconds, py.tokens_per_s, py.peak_rss_mib
            );
            println!(
                "  runner / python: {:.2}x{}",
                ours.tokens_per_s / py.tokens_per_s,
                if py.tokens == ours.tokens {
                    ""
                } else {
                    "  (token counts differ!)"
                }
            );
        }
        Err(e) => println!("  python tokenizers: not measured: {e}"),
    }
    Ok(())
}

fn bench_stage2(
    model_dir: &Path,
    layers: &str,
    batch: usize,
    seq: usize,
    steps: usize,
    python: &str,
    json: Option<&Path>,
) -> Result<(), Error> {
    use crate::bench::stage2::{PHASES, measure_ours};
    let n_layers = crate::model::TransformerConfig::from_dir(model_dir)
        .map_err(|e| Error::Usage(format!("error: cannot load {}: {e:#}", model_dir.display())))?
        .num_hidden_layers;
    let wkv_layers = parse_layers(layers, n_layers)?;
    println!(
        "one stage-2 optimizer step: batch {batch} × {seq} tokens, layers {wkv_layers:?} converted, {} threads",
        rayon::current_num_threads()
    );
    let ours =
        measure_ours(model_dir, wkv_layers.clone(), batch, seq, steps).map_err(Error::Other)?;
    println!(
        "  runner (burn flex, fused ops)    {:>8.2} s/step  {:>8.1} tok/s  KL {:.4}  peak RSS {:>6.0} MiB",
        ours.step_s, ours.tokens_per_s, ours.loss, ours.peak_rss_mib
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_stage2_torch.py");
    let layer_list: Vec<String> = wkv_layers.iter().map(|l| l.to_string()).collect();
    let (b, s, n) = (batch.to_string(), seq.to_string(), steps.to_string());
    let args = [
        "--teacher",
        model_dir.to_str().unwrap_or_default(),
        "--layers",
        &layer_list.join(","),
        "--batch",
        &b,
        "--seq",
        &s,
        "--steps",
        &n,
    ];
    let torch = crate::bench::run_python_json(python, &script, &args, "torch and transformers");
    let mut out =
        serde_json::json!({"ours": ours, "batch": batch, "seq": seq, "layers": wkv_layers});
    let torch_phases: Option<Vec<f64>> = torch.as_ref().ok().map(|t| {
        (0..PHASES.len())
            .map(|i| t["phases_s"][i].as_f64().unwrap_or(f64::NAN))
            .collect()
    });
    match torch {
        Ok(t) => {
            let ts = t["step_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "  pytorch eager ({} threads)        {:>8.2} s/step  {:>8.1} tok/s  KL {:.4}  peak RSS {:>6.0} MiB",
                t["threads"],
                ts,
                t["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                t["loss"].as_f64().unwrap_or(f64::NAN),
                t["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
            );
            println!(
                "  speed ratio (pytorch time / runner time): {:.2}×",
                ts / ours.step_s
            );
            out["pytorch"] = t;
            out["ratio"] = serde_json::json!(ts / ours.step_s);
        }
        Err(why) => println!("  pytorch eager: skipped ({why})"),
    }
    println!("  by phase (median s)          runner   pytorch    ratio");
    for (i, name) in PHASES.iter().enumerate() {
        let mine = ours.phases_s[i];
        match &torch_phases {
            Some(p) => println!(
                "    {name:<24} {mine:>8.2}  {:>8.2}  {:>6.2}×",
                p[i],
                p[i] / mine
            ),
            None => println!("    {name:<24} {mine:>8.2}"),
        }
    }
    if let Some(path) = json {
        crate::util::fsx::atomic_write_json(path, &out)?;
    }
    Ok(())
}

/// `--layers`: `all` or comma-separated indices, checked against the model.
fn parse_layers(layers: &str, n_layers: usize) -> Result<Vec<usize>, Error> {
    use crate::model::hybrid::LayerSelection;
    let selection = if layers == "all" {
        LayerSelection::Named("all".into())
    } else {
        let list: Result<Vec<usize>, _> = layers.split(',').map(|s| s.trim().parse()).collect();
        LayerSelection::List(list.map_err(|_| {
            Error::Usage(format!(
                "error: --layers {layers}: write `all` or indices like 0,2,4"
            ))
        })?)
    };
    selection
        .resolve(n_layers)
        .map_err(|e| Error::Usage(format!("error: --layers: {e}")))
}

fn bench_hybrid(
    model_dir: &Path,
    layers: &str,
    contexts: &[usize],
    new_tokens: usize,
    reps: usize,
    json: Option<&Path>,
) -> Result<(), Error> {
    use crate::bench::hybrid::{measure, render};
    use crate::model::Transformer;
    use crate::model::hybrid::{Hybrid, InitMode, StudentConfig};
    let device = burn::tensor::Device::flex();
    let load = || {
        Transformer::load(model_dir, &device)
            .map_err(|e| Error::Usage(format!("error: cannot load {}: {e:#}", model_dir.display())))
    };
    let teacher = load()?;
    let n_layers = teacher.config.num_hidden_layers;
    let wkv_layers = parse_layers(layers, n_layers)?;
    let t_rows: Vec<_> = contexts
        .iter()
        .map(|&c| measure(&teacher, c, new_tokens, reps))
        .collect();
    drop(teacher);
    let n_conv = wkv_layers.len();
    let student = StudentConfig {
        wkv_layers,
        ..Default::default()
    };
    let hybrid = Hybrid::from_teacher(load()?, student, InitMode::Teacher, 0)?;
    let h_rows: Vec<_> = contexts
        .iter()
        .map(|&c| measure(&hybrid, c, new_tokens, reps))
        .collect();
    println!("{}", render(&t_rows, &h_rows, n_conv, n_layers));
    if let Some(path) = json {
        crate::util::fsx::atomic_write_json(
            path,
            &serde_json::json!({"teacher": t_rows, "hybrid": h_rows, "converted_layers": n_conv}),
        )?;
    }
    Ok(())
}

fn bench_generate(
    model_dir: &Path,
    prompts: &[usize],
    new_tokens: usize,
    reps: usize,
    python: &str,
    json: Option<&Path>,
) -> Result<(), Error> {
    use crate::bench::generate::{measure_ours, measure_torch, render};
    let device = burn::tensor::Device::flex();
    let (model, _) = crate::commands::load_model_dir(model_dir, &device)?;
    let mut rows = Vec::new();
    for &p in prompts {
        let ours = measure_ours(&model, p, new_tokens, reps);
        let torch = measure_torch(python, model_dir, p, new_tokens, reps);
        println!("{}", render(p, new_tokens, &ours, &torch));
        rows.push(serde_json::json!({
            "prompt_tokens": p, "new_tokens": new_tokens, "runner": ours,
            "torch": torch.as_ref().ok(), "torch_error": torch.as_ref().err(),
        }));
    }
    if let Some(path) = json {
        crate::util::fsx::atomic_write_json(path, &rows)?;
    }
    Ok(())
}

fn bench_wkv(
    reps: usize,
    python: &str,
    no_reference: bool,
    quick: bool,
    json: Option<&Path>,
) -> Result<(), Error> {
    use crate::bench::wkv::{self, SHAPES};
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/bench/wkv_torch.py");
    let shapes = if quick { &SHAPES[..1] } else { &SHAPES[..] };
    let mut results = Vec::new();
    for &s in shapes {
        let result = wkv::measure(s, reps, !no_reference, python, &script);
        println!("{}", result.render(reps));
        results.push(result.to_json());
    }
    if let Some(path) = json {
        crate::util::fsx::atomic_write_json(path, &results)?;
    }
    Ok(())
}

fn load(file: &Path, config: &ConfigArgs) -> Result<Pipeline, Error> {
    let sets = Overrides::parse_sets(&config.sets)?;
    Ok(pipeline::load(
        file,
        &Overrides {
            sets,
            use_env: true,
        },
        crate::steps::KINDS,
    )?)
}

/// Loads a pipeline and resolves its graph, the step selection and the runs directory.
fn prepare(
    file: &Path,
    config: &ConfigArgs,
    select: &SelectArgs,
    runs_dir: Option<&Path>,
) -> Result<(Pipeline, StepGraph, Scope, PathBuf), Error> {
    let p = load(file, config)?;
    let graph = pipeline::graph_of(&p);
    let scope = select.selection().resolve(&p, &graph)?;
    let runs_root = pipeline::runs_root(&p, runs_dir);
    Ok((p, graph, scope, runs_root))
}

fn run(
    file: &Path,
    config: &ConfigArgs,
    select: &SelectArgs,
    run_id: Option<&str>,
    runs_dir: Option<&Path>,
) -> Result<(), Error> {
    let (p, graph, scope, runs_root) = prepare(file, config, select, runs_dir)?;
    let run = RunDir::create(&runs_root, &p.name, run_id)?;
    crate::util::fsx::atomic_write(
        &run.path.join(rundir::RESOLVED_CONFIG),
        p.resolved_toml().as_bytes(),
    )?;
    let mut record = RunRecord {
        pipeline: p.name.clone(),
        run_id: run.run_id(),
        source_file: file.canonicalize().unwrap_or_else(|_| file.to_path_buf()),
        overrides: config.sets.clone(),
        created_at: rundir::now(),
        status: RunStatus::Running,
        updated_at: rundir::now(),
        message: None,
        runner_version: keys::RUNNER_VERSION.to_string(),
        selection: select.selection(),
    };
    run.write_record(&record)?;
    progress::set_run_log(Some(&run.path.join(rundir::RUN_LOG)))?;
    tracing::info!(
        "run {} of pipeline `{}` in {}",
        record.run_id,
        p.name,
        run.path.display()
    );
    let result = Executor::new(&p, &run, &runs_root, graph, scope).execute(&mut record);
    finish(&run, result)
}

fn resume(run_dir: Option<&Path>, runs_dir: Option<&Path>) -> Result<(), Error> {
    let path = match run_dir {
        Some(p) => p.to_path_buf(),
        None => rundir::latest_run(runs_dir.unwrap_or(Path::new("runs")), true)?,
    };
    let run = RunDir::open(&path)?;
    let mut record = run
        .read_record()
        .ok_or_else(|| rundir::RunDirError::NotARun { path: path.clone() })?;
    if record.status == RunStatus::Complete {
        println!(
            "run {} is already complete; nothing to resume",
            path.display()
        );
        return Ok(());
    }
    let resolved = run.path.join(rundir::RESOLVED_CONFIG);
    let p = pipeline::load(&resolved, &Overrides::default(), crate::steps::KINDS)?;
    let graph = pipeline::graph_of(&p);
    let scope = record.selection.resolve(&p, &graph)?;
    // runs/<pipeline>/<run-id>: the cache lives two levels up.
    let runs_root = run
        .path
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("runs"));
    record.status = RunStatus::Running;
    record.updated_at = rundir::now();
    run.write_record(&record)?;
    progress::set_run_log(Some(&run.path.join(rundir::RUN_LOG)))?;
    tracing::info!(
        "resuming run {} of pipeline `{}`",
        run.path.display(),
        p.name
    );
    let result = Executor::new(&p, &run, &runs_root, graph, scope).execute(&mut record);
    finish(&run, result)
}

fn finish(
    run: &RunDir,
    result: Result<Vec<StepReport>, crate::pipeline::executor::ExecError>,
) -> Result<(), Error> {
    let _ = progress::set_run_log(None);
    let reports = result?;
    println!("{}", summary_table(&reports));
    println!("run directory: {}", run.path.display());
    // Point at the evaluation reports the run produced.
    for r in &reports {
        let report = run.path.join(&r.id).join("out/report.html");
        if report.is_file() {
            println!("report: {}", report.display());
        }
    }
    Ok(())
}

fn summary_table(reports: &[StepReport]) -> String {
    let width = reports.iter().map(|r| r.id.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:<12}  {:>8}", "step", "outcome", "seconds");
    for r in reports {
        let extra = match &r.outcome {
            Outcome::Ran {
                resumed_from: Some(tag),
            } => format!("  (resumed from checkpoint {tag})"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "\n{:<width$}  {:<12}  {:>8.1}{extra}",
            r.id,
            r.outcome.label(),
            r.seconds
        ));
    }
    out
}

fn plan_cmd(
    file: &Path,
    config: &ConfigArgs,
    select: &SelectArgs,
    runs_dir: Option<&Path>,
) -> Result<(), Error> {
    let (p, graph, scope, runs_root) = prepare(file, config, select, runs_dir)?;
    let entries = plan::plan(&p, &graph, &scope, &runs_root);
    let width = entries
        .iter()
        .map(|(id, _)| id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut runs = 0;
    for (id, entry) in &entries {
        runs += entry.runs() as usize;
        let (what, why) = match entry {
            PlanEntry::Cached { from } => ("cached", format!("same key as {from}")),
            PlanEntry::Runs(why) => ("run", why.to_string()),
            PlanEntry::AfterDeps(deps) => (
                "run",
                format!(
                    "after {} (reused if their outputs are unchanged)",
                    deps.join(", ")
                ),
            ),
            PlanEntry::NotSelected => ("skip", "not selected".to_string()),
        };
        println!("{id:<width$}  {what:<6}  {why}");
    }
    println!("{runs} of {} steps would run", entries.len());
    Ok(())
}

fn status(run_dir: Option<&Path>, runs_dir: Option<&Path>) -> Result<(), Error> {
    let path = match run_dir {
        Some(p) => p.to_path_buf(),
        None => rundir::latest_run(runs_dir.unwrap_or(Path::new("runs")), false)?,
    };
    let record = rundir::read_record(&path)
        .ok_or_else(|| rundir::RunDirError::NotARun { path: path.clone() })?;
    let locked = rundir::is_locked(&path);
    let state = match (record.status, locked) {
        (RunStatus::Running, false) => "interrupted (resume with `runner resume`)".to_string(),
        (s, _) => format!("{s:?}").to_lowercase(),
    };
    println!(
        "pipeline {}  run {}  {}",
        record.pipeline, record.run_id, state
    );
    println!("directory {}", path.display());
    let p = pipeline::load(
        &path.join(rundir::RESOLVED_CONFIG),
        &Overrides::default(),
        crate::steps::KINDS,
    )?;
    let width = p.steps.iter().map(|s| s.id.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<10}  {:<11}  {:>8}  {:>8}",
        "step", "kind", "status", "seconds", "attempts"
    );
    for s in &p.steps {
        let m = rundir::read_manifest(&path.join(&s.id));
        let (st, secs, attempts) = match &m {
            None => ("pending".to_string(), String::new(), String::new()),
            Some(m) => {
                let st = match (m.status, &m.cached_from, locked) {
                    (StepStatus::Complete, Some(_), _) => "cached",
                    (StepStatus::Complete, None, _) => "complete",
                    (StepStatus::Failed, _, _) => "failed",
                    (StepStatus::Running, _, true) => "running",
                    (StepStatus::Running, _, false) => "interrupted",
                };
                (
                    st.to_string(),
                    m.duration_s.map(|d| format!("{d:.1}")).unwrap_or_default(),
                    m.attempts.to_string(),
                )
            }
        };
        println!(
            "{:<width$}  {:<10}  {:<11}  {:>8}  {:>8}",
            s.id,
            s.kind(),
            st,
            secs,
            attempts
        );
    }
    if let Some(msg) = record.message {
        println!("{msg}");
    }
    Ok(())
}
