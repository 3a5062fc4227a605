//! `cargo xtask setup`: installs what building and testing tripod-bpf needs. Each step checks
//! first and only installs what is missing, so running it again changes nothing.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{find_in_path, is_root, probe, run, show};

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The toolchain that builds the eBPF crate (it needs `-Z build-std`, i.e. nightly features).
#[derive(Debug, PartialEq)]
pub struct Toolchain {
    pub name: &'static str,
    /// Set on every cargo command xtask spawns; tripod-user/build.rs reads them.
    pub env: Vec<(&'static str, &'static str)>,
}

impl Toolchain {
    pub fn apply(&self, cmd: &mut Command) {
        cmd.envs(self.env.iter().copied());
    }
}

/// Prefers an installed `nightly`; otherwise stable with RUSTC_BOOTSTRAP=1, which unlocks the
/// same unstable flags without downloading another toolchain.
pub fn choose_toolchain(rustup_toolchain_list: &str) -> Toolchain {
    // `+nightly` resolves to `nightly-<host>`, not to a dated `nightly-2025-01-01-<host>`.
    let is_nightly = |name: &str| {
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    let has_nightly = rustup_toolchain_list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(is_nightly);
    if has_nightly {
        Toolchain {
            name: "nightly",
            env: vec![("TRIPOD_EBPF_TOOLCHAIN", "nightly")],
        }
    } else {
        Toolchain {
            name: "stable",
            env: vec![
                ("TRIPOD_EBPF_TOOLCHAIN", "stable"),
                ("RUSTC_BOOTSTRAP", "1"),
            ],
        }
    }
}

/// The eBPF toolchain for this machine, from `rustup toolchain list`.
pub fn ebpf_toolchain() -> Result<Toolchain> {
    let list = probe(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed; is rustup installed (https://rustup.rs)?")?;
    Ok(choose_toolchain(&list))
}

/// True if `bpf-linker --version` output is from a 0.13.x release.
pub fn is_bpf_linker_0_13(version_output: &str) -> bool {
    version_output
        .split_whitespace()
        .any(|word| word == "0.13" || word.starts_with("0.13."))
}

/// Runs every setup step; returns the eBPF toolchain for the build that follows.
pub fn setup() -> Result<Toolchain> {
    let toolchain = ebpf_toolchain()?;
    let env = toolchain
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    ok(&format!("eBPF toolchain: {} ({env})", toolchain.name));

    let mut apt = Apt { updated: false };
    rust_src(toolchain.name)?;
    llvm(&mut apt)?;
    // Before bpf-linker: cargo install needs a C compiler (llvm-sys builds a C wrapper).
    gcc(&mut apt)?;
    bpf_linker()?;
    bpftrace(&mut apt);
    Ok(toolchain)
}

/// bpftrace, which `cargo xtask bench` runs beside tripod-bpf and perf.
/// Only the benchmark needs it, so a failed install is a warning: the
/// build goes on and the benchmark says bpftrace is missing.
fn bpftrace(apt: &mut Apt) {
    if let Err(error) = apt_tool(apt, "bpftrace", "bpftrace") {
        eprintln!("warning: bpftrace (for cargo xtask bench): {error:#}");
    }
}

fn ok(what: &str) {
    eprintln!("[xtask] ok: {what}");
}

fn installing(what: &str, cmd: &Command) {
    eprintln!("[xtask] installing: {what} ({})", show(cmd));
}

/// After installing, checks again: an install that "succeeds" without fixing things is an error.
fn verify(what: &str, satisfied: bool) -> Result<()> {
    if !satisfied {
        bail!("{what} is still missing after installing it");
    }
    ok(what);
    Ok(())
}

fn rust_src(toolchain: &str) -> Result<()> {
    let what = &format!("rust-src for {toolchain}");
    // build-std compiles `core` for the BPF target from these sources.
    let has = || {
        probe(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            toolchain,
            "--installed",
        ]))
        .is_some_and(|out| out.lines().any(|l| l.trim().starts_with("rust-src")))
    };
    if has() {
        ok(what);
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add", "rust-src", "--toolchain", toolchain]);
    installing(what, &cmd);
    run(&mut cmd)?;
    verify(what, has())
}

fn llvm(apt: &mut Apt) -> Result<()> {
    let what = "LLVM 22 (llvm-22-dev)";
    // bpf-linker links against this LLVM; it must match its `llvm-22` feature.
    let has = || Path::new(LLVM_PREFIX).join("bin/llvm-config").exists();
    if has() {
        ok(what);
        return Ok(());
    }
    apt.install(what, "llvm-22-dev")?;
    verify(what, has())
}

fn gcc(apt: &mut Apt) -> Result<()> {
    // The end-to-end tests compile small C fixture programs.
    apt_tool(apt, "gcc", "gcc")
}

/// What only the tests need: gdb, whose thread backtraces the dump tests compare with
/// and `report` reads back; elfutils' eu-stack, whose dumps `report` reads too; Go, whose `go tool pprof` reads our pprof files; tmux, the terminal the `top` tests drive; and py-spy, whose Python stacks the
/// Python tests compare with. Returns py-spy's path.
pub fn test_tools() -> Result<std::path::PathBuf> {
    let mut apt = Apt { updated: false };
    apt_tool(&mut apt, "gdb", "gdb")?;
    apt_tool(&mut apt, "eu-stack", "elfutils")?;
    // GNU time measures the peak memory of `report` in the streaming test.
    apt_tool(&mut apt, "/usr/bin/time", "time")?;
    tmux(&mut apt)?;
    go(&mut apt)?;
    py_spy()
}

/// tmux gives the `top` tests a real terminal to drive: keys in, the screen read back.
/// It has no `--version`: `tmux -V`.
fn tmux(apt: &mut Apt) -> Result<()> {
    let what = "tmux (for the top tests)";
    let has = || probe(Command::new("tmux").arg("-V")).is_some();
    if has() {
        ok(what);
        return Ok(());
    }
    apt.install(what, "tmux")?;
    verify(what, has())
}

/// `go tool pprof` comes with Debian's Go (`go version`: Go has no `--version`).
fn go(apt: &mut Apt) -> Result<()> {
    let what = "go (for go tool pprof)";
    let has = || probe(Command::new("go").arg("version")).is_some();
    if has() {
        ok(what);
        return Ok(());
    }
    apt.install(what, "golang-go")?;
    verify(what, has())
}

/// py-spy, installed with pip into the scripts directory of the `python3` on PATH (a pyenv
/// shim does not see new scripts until `pyenv rehash`, so the path is returned, not assumed).
pub fn py_spy() -> Result<std::path::PathBuf> {
    let what = "py-spy (pip install py-spy)";
    let scripts = probe(Command::new("python3").args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]))
    .context("python3 is needed for the Python tests and benchmarks; install python3 and pip")?;
    let path = Path::new(scripts.trim()).join("py-spy");
    let has = || probe(Command::new(&path).arg("--version")).is_some();
    if has() {
        ok(what);
        return Ok(path);
    }
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "py-spy",
    ]);
    installing(what, &cmd);
    run(&mut cmd)?;
    verify(what, has())?;
    Ok(path)
}

/// A program from an apt package of the same purpose, found by running `program --version`.
fn apt_tool(apt: &mut Apt, program: &str, package: &str) -> Result<()> {
    let has = || probe(Command::new(program).arg("--version")).is_some();
    if has() {
        ok(program);
        return Ok(());
    }
    apt.install(program, package)?;
    verify(program, has())
}

fn bpf_linker() -> Result<()> {
    let what = "bpf-linker 0.13 (LLVM 22)";
    // Found through PATH, which already includes ~/.cargo/bin (see cmd::add_cargo_bin_to_path).
    let has = || {
        probe(Command::new("bpf-linker").arg("--version")).is_some_and(|v| is_bpf_linker_0_13(&v))
    };
    if has() {
        ok(what);
        return Ok(());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(Path::new(LLVM_PREFIX).join("bin")).chain(std::env::split_paths(&path)),
    )?;
    let mut cmd = Command::new("cargo");
    // The default feature links a newer LLVM than Debian ships; pick the one installed above.
    cmd.env("LLVM_PREFIX", LLVM_PREFIX).env("PATH", path).args([
        "install",
        "bpf-linker",
        "--version",
        "^0.13",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    installing(what, &cmd);
    run(&mut cmd)?;
    verify(what, has())
}

/// apt-get installs, running `apt-get update` at most once and only if something is missing.
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, what: &str, package: &str) -> Result<()> {
        let mut update = Command::new("apt-get");
        update.arg("update");
        let mut install = Command::new("apt-get");
        install
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", package]);
        let manual = [show(&update), show(&install)];
        let by_hand = || {
            eprintln!("[xtask] install {what} by hand as root, then re-run `cargo xtask setup`:");
            manual.iter().for_each(|line| eprintln!("    {line}"));
        };

        let blocker = if !is_root() {
            Some("not running as root")
        } else if find_in_path("apt-get").is_none() {
            Some("apt-get not found")
        } else {
            None
        };
        if let Some(blocker) = blocker {
            by_hand();
            bail!("cannot install {what}: {blocker}");
        }

        installing(what, &install);
        let result = (|| {
            if !self.updated {
                run(&mut update)?;
                self.updated = true;
            }
            run(&mut install)
        })();
        if result.is_err() {
            by_hand();
        }
        result.with_context(|| format!("installing {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_nightly() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert_eq!(choose_toolchain(list).name, "nightly");
        assert_eq!(
            choose_toolchain(list).env,
            [("TRIPOD_EBPF_TOOLCHAIN", "nightly")]
        );
    }

    #[test]
    fn falls_back_to_stable_with_bootstrap() {
        // A dated nightly is not what `+nightly` selects, so it does not count.
        let list = "stable-x86_64-unknown-linux-gnu (default)\n\
                    nightly-2025-01-01-x86_64-unknown-linux-gnu\n";
        let toolchain = choose_toolchain(list);
        assert_eq!(toolchain.name, "stable");
        assert_eq!(
            toolchain.env,
            [
                ("TRIPOD_EBPF_TOOLCHAIN", "stable"),
                ("RUSTC_BOOTSTRAP", "1")
            ]
        );
        assert_eq!(choose_toolchain("no installed toolchains\n").name, "stable");
    }

    #[test]
    fn parses_bpf_linker_version() {
        assert!(is_bpf_linker_0_13("bpf-linker 0.13.0\n"));
        assert!(is_bpf_linker_0_13("bpf-linker 0.13.2 (LLVM 22.1.8)"));
        assert!(!is_bpf_linker_0_13("bpf-linker 0.9.15\n"));
        assert!(!is_bpf_linker_0_13("bpf-linker 0.130.0\n"));
        assert!(!is_bpf_linker_0_13(""));
    }
}
