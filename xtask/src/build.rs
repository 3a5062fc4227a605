//! `cargo xtask build`: builds tripod-bpf. tripod-user/build.rs compiles the eBPF crate (via
//! aya-build, with the toolchain chosen in setup) and embeds the object into the binary.

use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Result};

use crate::{
    cmd::{run, workspace_root},
    setup::{setup, Toolchain},
};

pub fn main(debug: bool) -> Result<()> {
    let toolchain = setup()?;
    let bin = build(&toolchain, debug)?;
    // On stdout (everything else goes to stderr) so scripts can capture it.
    println!("{}", bin.display());
    Ok(())
}

/// Builds the tripod-bpf binary and returns its absolute path.
pub fn build(toolchain: &Toolchain, debug: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd.args(["build", "--package", "tripod-user"]);
    if !debug {
        cmd.arg("--release");
    }
    toolchain.apply(&mut cmd);
    run(&mut cmd)?;

    // cargo resolves a relative CARGO_TARGET_DIR against its working directory, the root here.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |t| root.join(t));
    let bin = target
        .join(if debug { "debug" } else { "release" })
        .join("tripod-bpf");
    ensure!(
        bin.is_file(),
        "cargo build succeeded but {} is missing",
        bin.display()
    );
    Ok(bin)
}
