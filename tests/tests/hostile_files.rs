//! Files a target's owner controls cannot hang or exhaust the sampler: a
//! `.gnu_debuglink` naming a FIFO or a 20 GB sparse file, and corrupt debug
//! information, built here with binutils from the chain fixture. Each run
//! ends within its duration plus a bound, and names the chain from `.symtab`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tripod_tests::*;

/// How much longer than its duration a run may take: symbolizing the chain
/// fixture takes well under a second; a FIFO would take forever.
const BOUND: Duration = Duration::from_secs(20);

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of the chain fixture named `name` in `dir`, its debug information
/// moved to `name.debug` behind a `.gnu_debuglink` (`.symtab` stays).
fn chain_with_debuglink(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let binary = dir.join(name);
    let debug = dir.join(format!("{name}.debug"));
    // Frame pointers, so that `--unwind fp` has the chain too.
    fs::copy(CHAIN_FP, &binary).unwrap();
    let (b, d) = (binary.to_str().unwrap(), debug.to_str().unwrap());
    run("objcopy", &["--only-keep-debug", b, d]);
    run(
        "objcopy",
        &["--strip-debug", &format!("--add-gnu-debuglink={d}"), b],
    );
    fs::remove_file(&debug).unwrap();
    (binary, debug)
}

fn mkfifo(path: &Path) {
    run("mkfifo", &[path.to_str().unwrap()]);
}

/// Runs the sampler with `args`; returns its output, how long it took and
/// its peak memory in MiB.
fn run_watched(args: &[&str]) -> (std::process::Output, Duration, u64) {
    let started = Instant::now();
    let (out, peak_kib) = run_tripod_with_peak_rss(args);
    (out, started.elapsed(), peak_kib / 1024)
}

/// Records `pid` for `seconds` as folded stacks; asserts it ended in time and
/// in bounded memory, and that stderr names the refused file with `why`.
fn record_refusing(args: &[&str], seconds: u64, debug: &Path, why: &str) -> String {
    let (out, took, peak_mib) = run_watched(args);
    let stderr = stderr_text(&out);
    println!("{args:?}: {took:?}, peak {peak_mib} MiB; stderr:\n{stderr}");
    assert_success(&out);
    assert!(
        took < Duration::from_secs(seconds) + BOUND,
        "a {seconds} s run took {took:?}"
    );
    assert!(peak_mib < 512, "peak RSS {peak_mib} MiB");
    let named = stderr
        .lines()
        .any(|l| l.contains(&debug.display().to_string()) && l.contains(why));
    assert!(
        named,
        "stderr does not name {} as {why}:\n{stderr}",
        debug.display()
    );
    stdout_text(&out)
}

#[test]
fn debuglink_to_a_fifo_does_not_hang() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (binary, debug) = chain_with_debuglink(dir.path(), "chain_fifo");
    mkfifo(&debug);
    let fx = Fixture::start(binary.to_str().unwrap(), &[]);
    let pid = fx.pid().to_string();
    for unwind in ["dwarf", "fp"] {
        let args = [
            "--pid", &pid, "-d", "2", "-f", "folded", "-o", "-", "--unwind", unwind,
        ];
        let folded = record_refusing(&args, 2, &debug, "a FIFO, not a regular file");
        // .symtab still names every function of the chain, in order.
        assert_chain(&folded, "chain_fifo", CHAIN, 20, 0.9);
    }
    let args = ["--all", "-d", "2", "-f", "folded", "-o", "-"];
    let folded = record_refusing(&args, 2, &debug, "a FIFO");
    assert_chain(&folded, "chain_fifo", CHAIN, 20, 0.9);

    let (out, took, _) = run_watched(&["dump", "--pid", &pid, "-f", "folded"]);
    assert_success(&out);
    assert!(took < BOUND, "the dump took {took:?}");
    let dumped = stdout_text(&out);
    let stacks = parse_folded(&dumped);
    assert!(
        stacks.iter().any(|(frames, _)| has_chain(frames, CHAIN)),
        "the dump lacks the chain:\n{dumped}"
    );
}

#[test]
fn debuglink_to_a_sparse_giant_is_not_read() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (binary, debug) = chain_with_debuglink(dir.path(), "chain_sparse");
    // 20 GB that take no disk: reading it would take minutes and map it all.
    fs::File::create(&debug).unwrap().set_len(20 << 30).unwrap();
    let fx = Fixture::start(binary.to_str().unwrap(), &[]);
    let pid = fx.pid().to_string();
    let args = ["--pid", &pid, "-d", "2", "-f", "folded", "-o", "-"];
    let folded = record_refusing(&args, 2, &debug, "more than --max-file-size 1 GiB");
    assert_chain(&folded, "chain_sparse", CHAIN, 20, 0.9);
}

/// A debug section full of garbage: the symbol table still names the chain.
#[test]
fn corrupt_debug_info_falls_back_to_the_symbol_table() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("chain_baddwarf");
    let garbage = dir.path().join("garbage");
    // The same size as the real section, bytes from a fixed xorshift sequence.
    let size = section_size(CHAIN_NOFP, ".debug_info");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(&garbage, bytes).unwrap();
    let update = format!(".debug_info={}", garbage.display());
    run(
        "objcopy",
        &[
            "--update-section",
            &update,
            CHAIN_NOFP,
            binary.to_str().unwrap(),
        ],
    );
    let fx = Fixture::start(binary.to_str().unwrap(), &[]);
    let folded = sample_folded(fx.pid(), "2", &[]);
    assert_chain(&folded, "chain_baddwarf", CHAIN, 20, 0.9);
}

/// The size of section `name` of the ELF file `path`, from `readelf -SW`.
fn section_size(path: &str, name: &str) -> usize {
    let out = Command::new("readelf")
        .args(["-SW", path])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // `[Nr] Name Type Address Off Size ...`: the size follows the name by four fields.
    let line = text
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == name))
        .unwrap_or_else(|| panic!("{path} has no {name}:\n{text}"));
    let fields: Vec<&str> = line.split_whitespace().skip_while(|w| *w != name).collect();
    usize::from_str_radix(fields[4], 16).unwrap()
}

/// A binary over `--max-file-size` is not read at all: its frames stay in
/// the stacks, unknown, with the reason and the path.
#[test]
fn a_binary_over_the_size_cap_is_named_not_read() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let pid = fx.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let args = [
        "--pid",
        &pid,
        "-d",
        "2",
        "--unwind",
        "fp",
        "--max-file-size",
        "4K",
        "-o",
        log.to_str().unwrap(),
    ];
    let out = run_tripod(&args);
    assert_success(&out);
    let text = fs::read_to_string(&log).unwrap();
    let expected = format!("not read: {CHAIN_FP} is ");
    assert!(
        text.lines()
            .any(|l| l.contains(&expected) && l.contains("more than --max-file-size 4 KiB")),
        "no frame says {expected}...:\n{text}"
    );
    assert!(
        !text.contains("in spin"),
        "the binary was read after all:\n{text}"
    );
}

/// Corpus replay of `tripod-bpf report` inputs, cargo-fuzz style: a real
/// JSON recording with deterministic mutations (flipped and cut bytes, huge
/// and negative numbers, deep nesting, long strings). Each is rendered or
/// refused with one error line and exit 2: never a panic, never a hang.
#[test]
fn report_replays_mutated_recordings() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("run.json");
    record_chain_to(&recording, "json");
    let seed = fs::read_to_string(&recording).unwrap();
    let mutant = dir.path().join("mutant.json");
    let mut refused = 0;
    for n in 0..120u64 {
        fs::write(&mutant, mutate_json(&seed, n)).unwrap();
        let format = ["log", "folded", "json", "svg", "pprof", "speedscope"][n as usize % 6];
        let out = run_tripod(&["report", mutant.to_str().unwrap(), "-f", format, "-o", "-"]);
        let stderr = stderr_text(&out);
        match out.status.code() {
            Some(0) => {}
            Some(2) => {
                refused += 1;
                let lines: Vec<&str> = stderr.lines().collect();
                assert!(
                    lines.len() == 1 && lines[0].starts_with("tripod-bpf: error: "),
                    "mutant {n}: expected one error line, got:\n{stderr}"
                );
            }
            other => panic!("mutant {n} ({format}): exit {other:?}; stderr:\n{stderr}"),
        }
    }
    println!("{refused} of 120 mutants refused");
}

/// Mutant `n` of the JSON text `seed`.
fn mutate_json(seed: &str, n: u64) -> String {
    let mut x = 0x853c_49e6_748f_ea9b ^ (n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bytes = seed.as_bytes().to_vec();
    let at = (next() as usize) % bytes.len();
    match n % 6 {
        0 => {
            for _ in 0..1 + next() % 8 {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
        }
        1 => bytes.truncate(at),
        2 => {
            // Every number after `at` becomes one of the values a parser must refuse or bound.
            let huge = ["1e300", "-1", "18446744073709551616", "4294967296", "-0.5"];
            let text = String::from_utf8_lossy(&bytes[at..]).into_owned();
            let mut out = String::new();
            let mut in_number = false;
            for c in text.chars() {
                let digit = c.is_ascii_digit();
                if digit && !in_number {
                    out.push_str(huge[(next() % 5) as usize]);
                }
                if !digit {
                    out.push(c);
                }
                in_number = digit;
            }
            bytes.truncate(at);
            bytes.extend_from_slice(out.as_bytes());
        }
        3 => {
            let deep = "[".repeat(100_000);
            bytes.splice(at..at, deep.into_bytes());
        }
        4 => {
            // A string value a megabyte long, with control characters in it.
            if let Some(quote) = bytes[at..].iter().position(|&b| b == b'"') {
                let long = "\\u001b]0;x\\u0007".repeat(70_000);
                let i = at + quote + 1;
                bytes.splice(i..i, long.into_bytes());
            }
        }
        _ => {
            // The document repeated on one line: two objects where one is expected.
            let line = seed.lines().next().unwrap_or_default().to_string();
            bytes = format!("{line}{line}\n").into_bytes();
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
