//! `cargo xtask <command>` (an alias in .cargo/config.toml): the whole user-facing workflow.

mod bench;
mod build;
mod cmd;
mod run;
mod setup;
mod test;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::Parser;

#[derive(Parser)]
#[command(
    bin_name = "cargo xtask",
    about = "Set up, build, run and test tripod-bpf"
)]
enum Xtask {
    /// Install missing prerequisites (eBPF toolchain, rust-src, LLVM 22, bpf-linker, gcc)
    Setup,
    /// Set up, then build target/release/tripod-bpf and print its path
    Build {
        /// Build the user-space binary without optimizations (target/debug/tripod-bpf)
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run tripod-bpf as root with ARGS (via `sudo -E` if needed)
    Run {
        /// Build the user-space binary without optimizations (target/debug/tripod-bpf)
        #[arg(long)]
        debug: bool,
        /// Arguments for tripod-bpf
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build, then run the workspace tests against the built binary
    Test {
        /// Extra arguments for `cargo test`
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Measure tripod-bpf side by side with perf and bpftrace; write BENCHMARKS.md (as root)
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Rounds of each overhead configuration (the tables show medians)
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Rounds of the stack quality, accuracy, latency, short-lived-processes, steady-state and idle runs
    #[arg(long, default_value_t = 3)]
    short_runs: usize,
    /// Seconds of work per fixture thread in the overhead runs
    #[arg(long, default_value_t = 3.0)]
    work_seconds: f64,
    /// Seconds of the process-churn run (memory over time)
    #[arg(long, default_value_t = 120.0)]
    churn_seconds: f64,
    /// Run only these measurements (comma-separated)
    #[arg(long, value_delimiter = ',')]
    only: Vec<bench::Measurement>,
    /// Fewer and shorter runs, to try the bench out (not for publishing)
    #[arg(long)]
    quick: bool,
    /// Where to write the results, relative to the workspace root
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

impl BenchArgs {
    fn options(self) -> bench::Options {
        let command = std::iter::once("cargo xtask".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
        let quick = self.quick;
        bench::Options {
            runs: if quick { 1 } else { self.runs.max(1) },
            short_runs: if quick { 1 } else { self.short_runs.max(1) },
            work_seconds: if quick { 1.0 } else { self.work_seconds },
            sample_seconds: if quick { 1.0 } else { 3.0 },
            latency_seconds: if quick { 3.0 } else { 10.0 },
            churn_seconds: if quick {
                12.0
            } else {
                self.churn_seconds.max(10.0)
            },
            python_seconds: if quick { 2.0 } else { 5.0 },
            shortlived_seconds: if quick { 3.0 } else { 10.0 },
            only: self.only,
            output: self.output,
            command,
        }
    }
}

fn main() -> ExitCode {
    let xtask = Xtask::parse();
    cmd::add_cargo_bin_to_path();
    let result = match xtask {
        Xtask::Setup => setup::setup().map(|_| ExitCode::SUCCESS),
        Xtask::Build { debug } => build::main(debug).map(|()| ExitCode::SUCCESS),
        Xtask::Run { debug, args } => run::main(debug, args),
        Xtask::Test { args } => test::main(args).map(|()| ExitCode::SUCCESS),
        Xtask::Bench(args) => bench::main(args.options()).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}
