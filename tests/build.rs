//! Compiles the C fixtures in `fixtures/` into OUT_DIR and exports their absolute paths
//! as `FIXTURE_<NAME>` (read with `env!` in the tests).
//!
//! The output file name becomes the process name (comm) the sampler reports, so each
//! variant gets its own short (< 16 bytes) name.

use std::path::{Path, PathBuf};
use std::process::Command;

const FP: &[&str] = &[
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
];
const NOFP: &[&str] = &["-O2", "-g", "-fomit-frame-pointer"];

/// (output name, source, optimisation/unwinding flags, extra flags)
const FIXTURES: &[(&str, &str, &[&str], &[&str])] = &[
    ("chain_fp", "chain.c", FP, &[]),
    ("chain_nofp", "chain.c", NOFP, &[]),
    ("other_fp", "other.c", FP, &[]),
    ("execs", "execs.c", NOFP, &[]),
    ("execs_fp", "execs.c", FP, &[]),
    ("teardown", "teardown.c", NOFP, &[]),
    ("teardown_fp", "teardown.c", FP, &[]),
    ("syscalls_fp", "syscalls.c", FP, &[]),
    ("threads_fp", "threads.c", FP, &["-pthread"]),
    ("threads_nofp", "threads.c", NOFP, &["-pthread"]),
    ("population", "population.c", NOFP, &["-pthread"]),
    ("offcpu", "offcpu.c", NOFP, &[]),
    ("naps", "naps.c", NOFP, &[]),
    ("wall", "wall.c", NOFP, &["-pthread"]),
    ("comings", "comings.c", NOFP, &["-pthread"]),
    ("leaderless", "leaderless.c", FP, &["-pthread"]),
    ("clocks", "clocks.c", NOFP, &[]),
    ("split_fp", "split.c", FP, &[]),
    ("spawner", "spawner.c", NOFP, &[]),
];

/// (output name, input fixture): copies with every symbol and all debug info
/// removed. Only `.eh_frame` is left to unwind with, as in most shipped binaries.
const STRIPPED: &[(&str, &str)] = &[("chain_strip", "chain_nofp")];

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    println!("cargo:rerun-if-changed={}", fixtures.display());
    println!("cargo:rerun-if-env-changed=CC");

    // The cc crate only picks the C compiler (honouring CC); the flags are ours alone,
    // since its defaults (-O level, frame pointers) would change what the tests measure.
    let compiler = cc::Build::new().get_compiler().path().to_path_buf();

    for (name, source, opt, extra) in FIXTURES {
        let src = fixtures.join(source);
        let out = out_dir.join(name);
        println!("cargo:rerun-if-changed={}", src.display());
        let status = Command::new(&compiler)
            .args(*opt)
            .args(*extra)
            // chain.c defines `gamma`, which gcc otherwise treats as the libm builtin.
            .args(["-fno-builtin", "-Wall", "-Wextra", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", compiler.display()));
        assert!(
            status.success(),
            "compiling {} failed: {status}",
            src.display()
        );
        println!(
            "cargo:rustc-env=FIXTURE_{}={}",
            name.to_uppercase(),
            out.display()
        );
    }

    for (name, input) in STRIPPED {
        let out = out_dir.join(name);
        let status = Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&out)
            .arg(out_dir.join(input))
            .status()
            .unwrap_or_else(|e| panic!("cannot run strip: {e}"));
        assert!(status.success(), "stripping {input} failed: {status}");
        println!(
            "cargo:rustc-env=FIXTURE_{}={}",
            name.to_uppercase(),
            out.display()
        );
    }
}
