//! `cargo xtask <command>` (an alias in .cargo/config.toml): the whole user-facing workflow.

mod build;
mod cmd;
mod run;
mod setup;
mod test;

use std::{ffi::OsString, process::ExitCode};

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
}

fn main() -> ExitCode {
    let xtask = Xtask::parse();
    cmd::add_cargo_bin_to_path();
    let result = match xtask {
        Xtask::Setup => setup::setup().map(|_| ExitCode::SUCCESS),
        Xtask::Build { debug } => build::main(debug).map(|()| ExitCode::SUCCESS),
        Xtask::Run { debug, args } => run::main(debug, args),
        Xtask::Test { args } => test::main(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}
