//! `runner bench ...`: the subcommands and their tables (each measurement is in its own module
//! of `src/bench`).

use crate::error::Error;
use clap::Subcommand;
use std::path::{Path, PathBuf};

/// Benchmarks, each side by side with a reference, with peak memory.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
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
        /// Where to compute: `cpu` (with the PyTorch comparison), or `wgpu` / `wgpu:N` (builds
        /// with the `wgpu` feature: the step's time and arithmetic rate only).
        #[arg(long, default_value = "cpu", value_parser = crate::commands::parse_device)]
        device: burn::tensor::Device,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Decode speed and state memory of a teacher vs its hybrid student (mixers initialised
    /// from the teacher in the chosen layers) at growing context lengths, with the bytes each
    /// reads per decoded token (weights, cache, state), the rate it reads them at, and the
    /// machine's measured read bandwidth.
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
        /// Sequences decoded together after each context (its state repeated, as GRPO's
        /// groups are): every step reads the weights once for all of them.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        batch: u32,
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
        /// First check the fused op on `--device` against the CPU op (outputs, final state and
        /// every gradient, B=2 T=100 H=4 N=64 with masked tokens); exit 1 above 1e-3 relative.
        #[arg(long)]
        check: bool,
        /// Measure this shape instead, `B,T,H,N` (e.g. `8,4096,64,64`).
        #[arg(long, value_parser = parse_shape)]
        shape: Option<crate::bench::wkv::Shape>,
        /// Where to compute: `cpu`, `wgpu` / `wgpu:N` (builds with the `wgpu` feature), `tch`.
        /// The PyTorch column and the FMA peak are measured on the CPU only.
        #[arg(long, default_value = "cpu", value_parser = crate::commands::parse_device)]
        device: burn::tensor::Device,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// `--shape B,T,H,N`.
fn parse_shape(s: &str) -> Result<crate::bench::wkv::Shape, String> {
    let dims: Vec<usize> = s
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{s}` is not B,T,H,N (four positive integers)"))?;
    match dims[..] {
        [b, t, h, n] if b > 0 && t > 0 && h > 0 && n > 0 => {
            Ok(crate::bench::wkv::Shape { b, t, h, n })
        }
        _ => Err(format!("`{s}` is not B,T,H,N (four positive integers)")),
    }
}

/// Runs one benchmark command.
pub fn run(command: &BenchCommand) -> Result<(), Error> {
    match command {
        BenchCommand::Tokenize {
            tokenizer,
            input,
            text_fields,
            reps,
            python,
        } => bench_tokenize(tokenizer, input, text_fields, *reps, python),
        BenchCommand::Stage2 {
            model,
            layers,
            batch,
            seq,
            steps,
            python,
            device,
            json,
        } => {
            if rwkv_kernels::fused_available(device) {
                bench_stage2(model, layers, *batch, *seq, *steps, python, json.as_deref())
            } else {
                bench_stage2_on(model, layers, *batch, *seq, *steps, device, json.as_deref())
            }
        }
        BenchCommand::Hybrid {
            model,
            layers,
            contexts,
            new_tokens,
            reps,
            batch,
            json,
        } => bench_hybrid(
            model,
            layers,
            contexts,
            (*new_tokens, *reps, *batch as usize),
            json.as_deref(),
        ),
        BenchCommand::Generate {
            model,
            prompt_tokens,
            new_tokens,
            reps,
            python,
            json,
        } => bench_generate(
            model,
            prompt_tokens,
            *new_tokens,
            *reps,
            python,
            json.as_deref(),
        ),
        BenchCommand::Wkv {
            reps,
            python,
            no_reference,
            quick,
            check,
            shape,
            device,
            json,
        } => {
            if *check {
                check_wkv(device)?;
            }
            let shapes = match (shape, quick) {
                (Some(s), _) => vec![*s],
                (None, true) => crate::bench::wkv::SHAPES[..1].to_vec(),
                (None, false) => crate::bench::wkv::SHAPES.to_vec(),
            };
            bench_wkv(
                &shapes,
                *reps,
                python,
                *no_reference,
                device,
                json.as_deref(),
            )
        }
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

/// `bench stage2` on a device other than the CPU: the step's time, tokens/s and arithmetic
/// rate (no CPU references beside it).
fn bench_stage2_on(
    model_dir: &Path,
    layers: &str,
    batch: usize,
    seq: usize,
    steps: usize,
    device: &burn::tensor::Device,
    json: Option<&Path>,
) -> Result<(), Error> {
    let (config, wkv_layers) = config_and_layers(model_dir, layers)?;
    println!(
        "one stage-2 optimizer step on {device:?}: batch {batch} × {seq} tokens, {} of {} layers converted",
        wkv_layers.len(),
        config.num_hidden_layers
    );
    let ours = crate::bench::stage2::measure_ours(
        model_dir,
        wkv_layers.clone(),
        batch,
        seq,
        steps,
        device,
    )
    .map_err(Error::Other)?;
    let flops = crate::bench::stage2::step_flops(&config, wkv_layers.len(), batch, seq);
    let gflops = flops / ours.step_s / 1e9;
    println!(
        "  runner  {:>8.3} s/step  {:>10.1} tok/s  KL {:.4}  {:.1} GFLOP/step  {gflops:.1} GFLOP/s  host peak RSS {:.0} MiB",
        ours.step_s,
        ours.tokens_per_s,
        ours.loss,
        flops / 1e9,
        ours.peak_rss_mib
    );
    for (name, secs) in crate::bench::stage2::PHASES.iter().zip(ours.phases_s) {
        println!("    {name:<24} {secs:>8.3} s");
    }
    if let Some(path) = json {
        let out = serde_json::json!({
            "device": format!("{device:?}"),
            "ours": ours,
            "batch": batch,
            "seq": seq,
            "layers": wkv_layers,
            "flops_per_step": flops,
            "gflops": gflops,
        });
        crate::util::fsx::atomic_write_json(path, &out)?;
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
    let (config, wkv_layers) = config_and_layers(model_dir, layers)?;
    println!(
        "one stage-2 optimizer step: batch {batch} × {seq} tokens, layers {wkv_layers:?} converted, {} threads",
        rayon::current_num_threads()
    );
    let ours = measure_ours(
        model_dir,
        wkv_layers.clone(),
        batch,
        seq,
        steps,
        &burn::tensor::Device::flex(),
    )
    .map_err(Error::Other)?;
    println!(
        "  runner (burn flex, fused ops)    {:>8.2} s/step  {:>8.1} tok/s  KL {:.4}  peak RSS {:>6.0} MiB",
        ours.step_s, ours.tokens_per_s, ours.loss, ours.peak_rss_mib
    );
    // The LibTorch backend, in builds that have it (tensor-op WKV-7 and attention there).
    let tch = if cfg!(feature = "tch") {
        let device = crate::pipeline::schema::Device::Tch
            .tensor_device()
            .map_err(Error::Other)?;
        let t = measure_ours(model_dir, wkv_layers.clone(), batch, seq, steps, &device)
            .map_err(Error::Other)?;
        println!(
            "  runner (burn tch, LibTorch)      {:>8.2} s/step  {:>8.1} tok/s  KL {:.4}  peak RSS {:>6.0} MiB",
            t.step_s, t.tokens_per_s, t.loss, t.peak_rss_mib
        );
        Some(t)
    } else {
        None
    };
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
    if let Some(t) = &tch {
        out["ours_tch"] = serde_json::json!(t);
    }
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
    println!(
        "  by phase (median s)          runner   pytorch    ratio{}",
        if tch.is_some() { "  runner-tch" } else { "" }
    );
    for (i, name) in PHASES.iter().enumerate() {
        let mine = ours.phases_s[i];
        let tch_col = tch
            .as_ref()
            .map(|t| format!("  {:>10.2}", t.phases_s[i]))
            .unwrap_or_default();
        match &torch_phases {
            Some(p) => println!(
                "    {name:<24} {mine:>8.2}  {:>8.2}  {:>6.2}×{tch_col}",
                p[i],
                p[i] / mine
            ),
            None => println!("    {name:<24} {mine:>8.2}{tch_col}"),
        }
    }
    // Arithmetic rate against the machine's measured peak.
    let flops = crate::bench::stage2::step_flops(&config, wkv_layers.len(), batch, seq);
    let peak = crate::bench::peak::fma_peak_gflops();
    println!(
        "  ≈ {:.1} GFLOP per step (model arithmetic); measured f32 peak {peak:.0} GFLOP/s",
        flops / 1e9
    );
    let rate = |name: &str, secs: f64| {
        let g = flops / secs / 1e9;
        println!(
            "    {name:<24} {g:>8.1} GFLOP/s  {:>5.1} % of peak",
            100.0 * g / peak
        );
    };
    rate("runner (flex)", ours.step_s);
    if let Some(t) = &tch {
        rate("runner (tch)", t.step_s);
    }
    if let Some(t) = out.get("pytorch").and_then(|t| t["step_s"].as_f64()) {
        rate("pytorch eager", t);
    }
    out["flops_per_step"] = serde_json::json!(flops);
    out["peak_gflops"] = serde_json::json!(peak);
    if let Some(path) = json {
        crate::util::fsx::atomic_write_json(path, &out)?;
    }
    Ok(())
}

/// `--layers`: `all` or comma-separated indices, checked against the model.
/// The model directory's configuration and the `--layers` it names, checked against it.
fn config_and_layers(
    model_dir: &Path,
    layers: &str,
) -> Result<(crate::model::TransformerConfig, Vec<usize>), Error> {
    let config = crate::model::TransformerConfig::from_dir(model_dir)
        .map_err(|e| Error::Usage(format!("error: cannot load {}: {e:#}", model_dir.display())))?;
    let wkv_layers = parse_layers(layers, config.num_hidden_layers)?;
    Ok((config, wkv_layers))
}

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
    (new_tokens, reps, batch): (usize, usize, usize),
    json: Option<&Path>,
) -> Result<(), Error> {
    use crate::bench::hybrid::{Reads, measure_batch, render};
    use crate::model::Transformer;
    use crate::model::hybrid::{Hybrid, InitMode, StudentConfig};
    use burn::module::Module;
    let device = burn::tensor::Device::flex();
    let load = || {
        Transformer::load(model_dir, &device)
            .map_err(|e| Error::Usage(format!("error: cannot load {}: {e:#}", model_dir.display())))
    };
    let teacher = load()?;
    let teacher_weights = teacher.num_params() * 4;
    let n_layers = teacher.config.num_hidden_layers;
    let wkv_layers = parse_layers(layers, n_layers)?;
    let t_rows: Vec<_> = contexts
        .iter()
        .map(|&c| measure_batch(&teacher, c, new_tokens, reps, batch))
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
        .map(|&c| measure_batch(&hybrid, c, new_tokens, reps, batch))
        .collect();
    let reads = Reads {
        teacher_weights,
        hybrid_weights: hybrid.num_params() * 4,
        bandwidth_gb_s: crate::bench::peak::read_bandwidth_gb_s(),
        batch,
    };
    println!("{}", render(&t_rows, &h_rows, n_conv, n_layers, &reads));
    if let Some(path) = json {
        crate::util::fsx::atomic_write_json(
            path,
            &serde_json::json!({
                "teacher": t_rows,
                "hybrid": h_rows,
                "converted_layers": n_conv,
                "teacher_weight_bytes": reads.teacher_weights,
                "hybrid_weight_bytes": reads.hybrid_weights,
                "read_bandwidth_gb_s": reads.bandwidth_gb_s,
                "batch": batch,
            }),
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

/// `bench wkv --check`: the fused op on `device` against the CPU op.
fn check_wkv(device: &burn::tensor::Device) -> Result<(), Error> {
    const TOL: f64 = 1e-3;
    let shape = crate::bench::wkv::Shape {
        b: 2,
        t: 100,
        h: 4,
        n: 64,
    };
    let errors = crate::bench::wkv::check_against_cpu(shape, device);
    println!(
        "WKV-7 on {device:?} vs the CPU op, B={} T={} H={} N={} (max relative error):",
        shape.b, shape.t, shape.h, shape.n
    );
    let mut worst: f64 = 0.0;
    for (name, e) in &errors {
        println!("  {name:<7} {e:.2e}");
        worst = worst.max(if e.is_nan() { f64::INFINITY } else { *e });
    }
    if worst > TOL {
        return Err(Error::Other(anyhow::anyhow!(
            "the WKV-7 kernels on {device:?} differ from the CPU op by {worst:.2e} (tolerance {TOL:.0e})"
        )));
    }
    println!("  ok (tolerance {TOL:.0e})");
    Ok(())
}

fn bench_wkv(
    shapes: &[crate::bench::wkv::Shape],
    reps: usize,
    python: &str,
    no_reference: bool,
    device: &burn::tensor::Device,
    json: Option<&Path>,
) -> Result<(), Error> {
    use crate::bench::wkv;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/bench/wkv_torch.py");
    let mut results = Vec::new();
    for &s in shapes {
        let result = wkv::measure(s, reps, !no_reference, python, &script, device);
        println!("{}", result.render(reps));
        results.push(result.to_json());
    }
    if let Some(path) = json {
        crate::util::fsx::atomic_write_json(path, &results)?;
    }
    Ok(())
}
