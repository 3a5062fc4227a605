//! `cargo xtask test [-- ARGS]`: builds tripod-bpf, then runs the workspace tests against it.

use std::{ffi::OsString, process::Command};

use anyhow::Result;

use crate::{
    build::build,
    cmd::{is_root, run, workspace_root},
    setup::{setup, test_tools},
};

pub fn main(args: Vec<OsString>) -> Result<()> {
    let toolchain = setup()?;
    let py_spy = test_tools()?;
    let bin = build(&toolchain, false)?;
    if !is_root() {
        // The tests decide: they skip with a reason, or fail when CI is set.
        eprintln!("[xtask] note: not root; tests that load eBPF programs cannot run");
    }

    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    // tripod-ebpf only builds for the BPF target; tripod-user's build script builds it.
    cmd.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "tripod-ebpf",
    ]);
    // Same env as the build above, so cargo reuses it instead of rebuilding.
    toolchain.apply(&mut cmd);
    cmd.env("TRIPOD_BPF", &bin)
        .env("PY_SPY", &py_spy)
        .args(args);
    run(&mut cmd)
}
