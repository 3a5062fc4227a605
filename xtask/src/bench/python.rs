//! Measurement 9: what sampling a CPU-bound Python program costs it, and whether the stacks
//! show its Python functions. `hot.py` runs a fixed amount of pure-Python arithmetic through
//! main;outer_step;inner_loop and times it itself, after a signal, so sampler start-up is
//! left out. tripod-bpf records it with and without its Python frames (`--no-python` shows
//! what reading them costs); py-spy, the usual tool for this, records it pausing the process
//! for each sample (its default) and without pausing it (`--nonblocking`). Every
//! configuration runs under pyenv's CPython 3.8, 3.11 and 3.13 and Debian's 3.11: each
//! reads its frames another way, and pyenv's and Debian's builds differ.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{
    fixtures::PYTHON_CHAIN,
    proc::{field, Fixture},
    round_order,
    samplers::{Event, Sampler},
    say,
    stacks::Share,
    Bench, Options,
};
use crate::cmd::probe;

pub const HZ: u32 = 99;
/// Iterations of the calibration run (a fraction of a second).
const PROBE_ITERATIONS: u64 = 3_000_000;
/// `hot.py` runs its iterations in calls of this many (its `STEP`).
const STEP: u64 = 100_000;
/// Debian's interpreter, measured besides pyenv's.
const SYSTEM_PYTHON: &str = "/usr/bin/python3.11";
/// Longest a run may take: a sampler that slows the fixture down 100-fold still finishes.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// A Python interpreter the fixture runs under.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub path: PathBuf,
    /// Such as `3.11.7`.
    pub version: String,
}

impl Interpreter {
    pub fn label(&self) -> String {
        format!("CPython {}", self.version)
    }
}

/// An interpreter (an index into [`Python::interpreters`]) and a sampler, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub interpreter: usize,
    pub sampler: Option<Sampler>,
}

/// One run of the fixture.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Seconds of the Python work, as the fixture timed it.
    pub elapsed: f64,
    /// Sampler CPU seconds (all its threads) while the work ran.
    pub sampler_cpu: f64,
    /// Samples showing main;outer_step;inner_loop, out of all the sampler recorded.
    pub chain: Share,
}

pub struct Python {
    /// Loop iterations of every run (calibrated to `python_seconds` on the first interpreter).
    pub iterations: u64,
    pub interpreters: Vec<Interpreter>,
    pub runs: Vec<(Config, Vec<Run>)>,
}

impl Python {
    pub fn runs_of(&self, config: Config) -> &[Run] {
        self.runs
            .iter()
            .find(|(c, _)| *c == config)
            .map_or(&[], |(_, runs)| runs)
    }
}

pub fn measure(bench: &mut Bench, options: &Options) -> Result<Python> {
    let interpreters = find_interpreters()?;
    for interpreter in &interpreters {
        say(&format!(
            "python: {} ({})",
            interpreter.label(),
            interpreter.path.display()
        ));
    }
    let iterations = calibrate(bench, &interpreters[0], options.python_seconds)?;
    let samplers: Vec<Option<Sampler>> = std::iter::once(None)
        .chain(bench.tools.python_samplers().into_iter().map(Some))
        .collect();
    let configs: Vec<Config> = (0..interpreters.len())
        .flat_map(|interpreter| {
            samplers.iter().map(move |&sampler| Config {
                interpreter,
                sampler,
            })
        })
        .collect();
    let mut runs: Vec<(Config, Vec<Run>)> = configs.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..options.runs {
        for index in round_order(round, options.runs, configs.len()) {
            let config = configs[index];
            let label = describe(&interpreters, config);
            let interpreter = &interpreters[config.interpreter].path;
            match run_once(bench, interpreter, iterations, config.sampler) {
                Ok(run) => {
                    let recorded = config.sampler.map_or(String::new(), |_| {
                        format!(
                            ", sampler {:.3} s cpu, {} of {} samples in the chain",
                            run.sampler_cpu, run.chain.hits, run.chain.of
                        )
                    });
                    say(&format!(
                        "python {}/{}: {label}: elapsed {:.3} s{recorded}",
                        round + 1,
                        options.runs,
                        run.elapsed
                    ));
                    runs[index].1.push(run);
                }
                Err(e) => bench.failed(&format!("python: {label}"), e),
            }
        }
    }
    Ok(Python {
        iterations,
        interpreters,
        runs,
    })
}

pub fn describe(interpreters: &[Interpreter], config: Config) -> String {
    let sampler = config
        .sampler
        .map_or("no sampler".into(), |s| s.to_string());
    format!("{}, {sampler}", interpreters[config.interpreter].label())
}

/// pyenv's minor versions measured side by side: the oldest with `PyFrameObject` chains
/// and native thread matching by pthread id that most people still run (3.8), the
/// `_PyInterpreterFrame` generation (3.11), and the newest, whose offsets the interpreter
/// publishes itself (3.13).
const PYENV_VERSIONS: &[&str] = &["3.8", "3.11", "3.13"];

/// pyenv's 3.8, 3.11 and 3.13 (the newest patch release of each under `$PYENV_ROOT`, else
/// `~/.pyenv`), then Debian's 3.11 (static, no frame pointers). Each must be there: the
/// section compares them.
fn find_interpreters() -> Result<Vec<Interpreter>> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")))
        .context("neither PYENV_ROOT nor HOME is set: where is pyenv?")?;
    let mut interpreters = Vec::new();
    for minor in PYENV_VERSIONS {
        let path = pyenv_version(&root.join("versions"), minor).with_context(|| {
            format!(
                "the python measurement needs pyenv's Python {minor} in {}/versions",
                root.display()
            )
        })?;
        interpreters.push(interpreter(&path)?);
    }
    interpreters.push(interpreter(Path::new(SYSTEM_PYTHON))?);
    Ok(interpreters)
}

/// `versions/3.8.N/bin/python3.8` of the largest N.
fn pyenv_version(versions: &Path, minor: &str) -> Option<PathBuf> {
    std::fs::read_dir(versions)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let patch: u32 = name.strip_prefix(minor)?.strip_prefix('.')?.parse().ok()?;
            let exe = entry.path().join("bin").join(format!("python{minor}"));
            exe.is_file().then_some((patch, exe))
        })
        .max()
        .map(|(_, exe)| exe)
}

fn interpreter(path: &Path) -> Result<Interpreter> {
    let version =
        probe(Command::new(path).args(["-c", "import platform; print(platform.python_version())"]))
            .with_context(|| format!("{} does not run", path.display()))?;
    Ok(Interpreter {
        path: path.to_owned(),
        version: version.trim().to_owned(),
    })
}

/// Iterations for about `seconds` of work, from one timed run without a sampler.
fn calibrate(bench: &Bench, interpreter: &Interpreter, seconds: f64) -> Result<u64> {
    let probe = run_once(bench, &interpreter.path, PROBE_ITERATIONS, None)?;
    let per_second = PROBE_ITERATIONS as f64 / probe.elapsed.max(1e-3);
    let iterations = ((per_second * seconds) as u64 / STEP).max(1) * STEP;
    say(&format!(
        "calibrated: {iterations} iterations for {seconds} s of Python on {} ({:.1} M/s)",
        interpreter.label(),
        per_second / 1e6
    ));
    Ok(iterations)
}

/// Starts the fixture, attaches `sampler` to it, then lets it work and stops both.
fn run_once(
    bench: &Bench,
    interpreter: &Path,
    iterations: u64,
    sampler: Option<Sampler>,
) -> Result<Run> {
    let script = bench
        .fixtures
        .hot_py
        .to_str()
        .context("non-UTF-8 script path")?;
    let mut fixture = Fixture::start(interpreter, &[script, &iterations.to_string()])?;
    let (line, recorded) =
        bench.record_signalled(&mut fixture, sampler, Event::Clock(HZ), RUN_TIMEOUT)?;
    let mut run = parse_result(&line)?;
    if let Some((stopped, sampler_cpu)) = recorded {
        run.sampler_cpu = sampler_cpu;
        // Fails when the sampler recorded nothing.
        let (folded, _) = stopped.folded(&bench.tools)?;
        run.chain = folded.python_chain_share(PYTHON_CHAIN);
    }
    fixture.stop()?;
    Ok(run)
}

/// The fixture's `elapsed SECONDS checksum N` line.
fn parse_result(line: &str) -> Result<Run> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let elapsed: f64 = field(&fields, "elapsed")?;
    if elapsed <= 0.0 {
        bail!("the fixture timed its work at {elapsed} s");
    }
    Ok(Run {
        elapsed,
        ..Run::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_result_line() {
        let run = parse_result("elapsed 4.871235 checksum 339642").unwrap();
        assert_eq!(run.elapsed, 4.871235);
        assert!(parse_result("elapsed 0.000000 checksum 1").is_err());
        assert!(parse_result("ready 42").is_err());
    }
}
