//! Command-line interface: `runner run | resume | plan | dag | validate | status | generate |
//! chat | serve | bench`. This file is the dispatch table; each subcommand's code lives with it
//! (`commands::pipeline`, `commands::{generate, chat, serve}`, `bench::cli`).

use crate::bench::cli::BenchCommand;
use crate::commands::pipeline::{self as pipe, ConfigArgs, SelectArgs};
use crate::error::Error;
use crate::progress;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
    /// Show the state of a run's steps (status, time, attempts; a running step's progress, loss and ETA; a finished training step's last loss).
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
    /// Run one attempt of a step inside an existing run directory: what a step's Slurm job
    /// runs (`[pipeline.executor] kind = "slurm"`); not for direct use.
    #[command(hide = true)]
    ExecStep {
        run_dir: PathBuf,
        step: String,
        attempt: u32,
    },
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
        } => pipe::run(file, config, select, run_id.as_deref(), runs_dir),
        Command::Resume { run_dir } => pipe::resume(run_dir.as_deref(), runs_dir),
        Command::Plan {
            file,
            config,
            select,
        } => pipe::plan_cmd(file, config, select, runs_dir),
        Command::Dag {
            file,
            config,
            dot,
            mermaid,
        } => pipe::dag(file, config, *dot, *mermaid),
        Command::Validate { file, config } => pipe::validate(file, config),
        Command::Status { run_dir } => pipe::status(run_dir.as_deref(), runs_dir),
        Command::Generate(args) => crate::commands::generate::run(args, cli.quiet),
        Command::Chat(args) => crate::commands::chat::run(args, cli.quiet),
        Command::Serve(args) => crate::commands::serve::run(args),
        Command::Bench(command) => crate::bench::cli::run(command),
        Command::ExecStep {
            run_dir,
            step,
            attempt,
        } => Ok(crate::pipeline::jobs::exec_step(
            run_dir,
            step,
            *attempt,
            crate::steps::KINDS,
        )?),
    }
}
