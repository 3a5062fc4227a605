//! `cargo xtask run -- ARGS`: builds tripod-bpf, then runs it as root (through `sudo -E` when
//! needed, since loading eBPF programs requires privileges) and reports its exit code as ours.

use std::{ffi::OsString, process::Command, process::ExitCode};

use anyhow::{bail, Context as _, Result};

use crate::{
    build::build,
    cmd::{exit_code, find_in_path, is_root, show, spawn},
    setup::setup,
};

pub fn main(debug: bool, args: Vec<OsString>) -> Result<ExitCode> {
    let toolchain = setup()?;
    let bin = build(&toolchain, debug)?;

    let mut cmd = Command::new(&bin);
    cmd.args(args);
    if !is_root() {
        if find_in_path("sudo").is_none() {
            bail!(
                "tripod-bpf needs root and sudo is not installed; run as root: {}",
                show(&cmd)
            );
        }
        // -E keeps variables such as RUST_LOG for tripod-bpf.
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(cmd.get_program()).args(cmd.get_args());
        cmd = sudo;
    }

    let mut child = spawn(&mut cmd)?;
    // Ctrl-C reaches the whole foreground process group; tripod-bpf handles it and exits 0.
    // Ignoring it here (only after the spawn, so the child keeps the default disposition)
    // lets xtask wait for that exit code instead of dying first.
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait().context("waiting for tripod-bpf")?;
    Ok(ExitCode::from(exit_code(status)))
}
