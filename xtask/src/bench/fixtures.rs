//! The benchmark's fixture programs (C sources in tests/fixtures/, next to the test
//! fixtures), compiled by the bench itself into target/bench/fixtures, and its Python
//! script (xtask/bench-fixtures/hot.py), run where it is.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::cmd::{run, workspace_root};

/// Frame pointers everywhere, leaf functions included: the best case for fp unwinders.
const FP: &[&str] = &[
    "-O1",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
];
/// What distributions ship: optimized, no frame pointers, only .eh_frame to unwind with.
const NOFP: &[&str] = &["-O2", "-fomit-frame-pointer"];

/// The compiled fixtures. Each file name is also the process name samplers report.
pub struct Fixtures {
    /// Fixed work through main;alpha;beta;gamma;spin, with frame pointers.
    pub work_fp: PathBuf,
    /// The same source without frame pointers.
    pub work_nofp: PathBuf,
    /// Work split 3:1 between `heavy` and `light`.
    pub split: PathBuf,
    /// 2^14 distinct call paths.
    pub paths: PathBuf,
    /// Short-lived processes, started continuously.
    pub churn: PathBuf,
    /// The end-to-end tests' chain.c: main;alpha;beta;gamma;spin for `--seconds S`, then
    /// exit; run over and over for milliseconds each, with frame pointers.
    pub chain_fp: PathBuf,
    /// The same source without frame pointers.
    pub chain_nofp: PathBuf,
    /// Two threads passing a byte back and forth: a context switch every few microseconds.
    pub pingpong: PathBuf,
    /// 1,000 threads parked in three kinds of wait.
    pub manythreads: PathBuf,
    /// CPU-bound pure Python through main;outer_step;inner_loop (a script, not compiled).
    pub hot_py: PathBuf,
}

/// The chain every `work` sample should show, outermost first (`chain` has the same one).
pub const WORK_CHAIN: &[&str] = &["main", "alpha", "beta", "gamma", "spin"];

/// The Python chain every `hot.py` sample should show, outermost first.
pub const PYTHON_CHAIN: &[&str] = &["main", "outer_step", "inner_loop"];

impl Fixtures {
    pub fn build(out_dir: &Path) -> Result<Fixtures> {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let compile = |name: &str, source: &str, flags: &[&str]| -> Result<PathBuf> {
            let out = out_dir.join(name);
            let src = workspace_root().join("tests/fixtures").join(source);
            run(Command::new("gcc")
                .args(flags)
                // -fno-builtin: work.c and chain.c define `gamma`, which gcc treats as libm's
                // otherwise.
                .args(["-g", "-pthread", "-fno-builtin", "-Wall", "-Wextra", "-o"])
                .arg(&out)
                .arg(&src))?;
            Ok(out)
        };
        Ok(Fixtures {
            work_fp: compile("work_fp", "work.c", FP)?,
            work_nofp: compile("work_nofp", "work.c", NOFP)?,
            split: compile("split", "split.c", FP)?,
            paths: compile("paths", "paths.c", FP)?,
            churn: compile("churn", "churn.c", FP)?,
            // The tests' names and flags: the bench measures what the end-to-end test asserts.
            chain_fp: compile("chain_fp", "chain.c", FP)?,
            chain_nofp: compile("chain_nofp", "chain.c", NOFP)?,
            // These two time the samplers and dumpers, not their stacks: built as shipped.
            pingpong: compile("pingpong", "pingpong.c", NOFP)?,
            manythreads: compile("manythreads", "manythreads.c", NOFP)?,
            hot_py: workspace_root().join("xtask/bench-fixtures/hot.py"),
        })
    }
}

/// The process name (comm) of a fixture.
pub fn comm(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("fixture names are ASCII")
}
