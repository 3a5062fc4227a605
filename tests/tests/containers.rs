//! Containers without a container runtime: a cgroup of our own under
//! /sys/fs/cgroup (`--cgroup` samples only what is in it, and every output
//! names it), and a process in its own pid and mount namespaces (`unshare`)
//! named with both its pids.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tripod_tests::*;

/// The cgroup v2 mount: unified machines have it at /sys/fs/cgroup, hybrid
/// ones (v1 controllers beside it) at /sys/fs/cgroup/unified.
fn cgroup_mount() -> PathBuf {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| cgroup2_magic(path))
        .expect(
            "no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified; these tests need one",
        )
}

/// A cgroup v2 directory the test creates; its processes are killed and
/// the directory removed on drop.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn create(name: &str) -> TestCgroup {
        TestCgroup::named(&format!("tripod-e2e-{name}-{}", std::process::id()))
    }

    /// A cgroup with exactly this directory name, below the root.
    fn named(name: &str) -> TestCgroup {
        let dir = cgroup_mount().join(name);
        // A leftover of an interrupted run.
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TestCgroup { dir }
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }

    /// The path below the mount, as tripod-bpf reports it.
    fn path(&self) -> String {
        format!("/{}", self.dir.file_name().unwrap().to_string_lossy())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // cgroup.kill (5.14) ends whatever is still inside; then the
        // directory can go once the processes are reaped.
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

fn cgroup2_magic(path: &Path) -> bool {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: zeroed is a valid statfs; a NUL-terminated path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(name.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == 0x6367_7270 }
}

/// The `processes` of a JSON report, by pid.
fn json_processes(text: &str) -> Vec<serde_json::Value> {
    let doc: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not a JSON document ({e}):\n{text}"));
    doc["processes"].as_array().cloned().unwrap_or_default()
}

/// Runs `--cgroup PATH` with `extra` arguments, JSON to stdout; the processes reported.
fn cgroup_run(cgroup: &TestCgroup, extra: &[&str]) -> Vec<serde_json::Value> {
    let path = cgroup.dir.display().to_string();
    let mut args = vec!["--cgroup", &path, "-d", "2", "-f", "json", "-o", "-"];
    args.extend_from_slice(extra);
    let out = run_tripod(&args);
    assert_success(&out);
    json_processes(&stdout_text(&out))
}

/// Only the fixture in the cgroup is sampled, whatever else runs, in each
/// unwinding mode and in wall-clock mode; its cgroup is in the JSON.
#[test]
fn a_cgroup_run_samples_only_what_is_in_the_cgroup() {
    if !require_bpf() {
        return;
    }
    let _guard = serial();
    let cgroup = TestCgroup::create("only");
    let inside = Fixture::start(CHAIN_FP, &[]);
    cgroup.add(inside.pid());
    let outside = Fixture::start(OTHER_FP, &[]);
    for extra in [&[][..], &["--unwind", "fp"], &["--mode", "wall"]] {
        let processes = cgroup_run(&cgroup, extra);
        let pids: Vec<u64> = processes.iter().filter_map(|p| p["pid"].as_u64()).collect();
        assert_eq!(
            pids,
            [u64::from(inside.pid())],
            "{extra:?}: expected only the fixture in the cgroup (outside: {}): {processes:?}",
            outside.pid()
        );
        assert_eq!(processes[0]["cgroup"], cgroup.path(), "{extra:?}");
        assert!(processes[0].get("container").is_none(), "{extra:?}");
    }
}

/// Off-CPU time is filtered too: the fixture (one thread blocked for good,
/// one busy) is in the cgroup, a `sleep` outside it waits all along and is
/// not reported, although it was waiting when the run started.
#[test]
fn off_cpu_time_is_filtered_by_cgroup() {
    if !require_bpf() {
        return;
    }
    let _guard = serial();
    let cgroup = TestCgroup::create("offcpu");
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("starting sleep");
    let inside = Fixture::start(WALL, &[]);
    cgroup.add(inside.pid());
    let processes = cgroup_run(&cgroup, &["--mode", "off-cpu"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let pids: Vec<u64> = processes.iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert_eq!(pids, [u64::from(inside.pid())], "{processes:?}");
    assert_eq!(processes[0]["cgroup"], cgroup.path());
}

/// A cgroup shaped like Docker's (`docker-ID.scope`) names a container in
/// the JSON and the log, also for a process that only waits (its cgroup is
/// then read from /proc: the task iterator's records carry no cgroup id).
#[test]
fn a_docker_shaped_cgroup_is_named_as_a_container() {
    if !require_bpf() {
        return;
    }
    let _guard = serial();
    let id = format!("{:064x}", u64::from(std::process::id()) << 8 | 0xcd);
    let cgroup = TestCgroup::named(&format!("docker-{id}.scope"));
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("starting sleep");
    cgroup.add(sleeper.id());
    let processes = cgroup_run(&cgroup, &["--mode", "wall"]);
    let path = cgroup.path();
    let log = run_tripod(&["--cgroup", &path, "--mode", "wall", "-d", "1", "-o", "-"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(processes.len(), 1, "{processes:?}");
    assert_eq!(processes[0]["comm"], "sleep");
    assert_eq!(processes[0]["cgroup"], path);
    assert_eq!(
        processes[0]["container"],
        serde_json::json!({"runtime": "docker", "id": id})
    );
    assert_success(&log);
    let text = stdout_text(&log);
    let short = format!("(sleep) in docker:{}", &id[..12]);
    assert!(text.contains(&short), "{text}");
}

/// pprof samples carry the cgroup as a label, and folded lines can start with it.
#[test]
fn pprof_labels_and_folded_prefix_name_the_cgroup() {
    if !require_bpf() {
        return;
    }
    let _guard = serial();
    let cgroup = TestCgroup::create("labels");
    let inside = Fixture::start(CHAIN_FP, &[]);
    cgroup.add(inside.pid());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.pb.gz");
    let path = cgroup.dir.display().to_string();
    let out = run_tripod(&[
        "--cgroup",
        &path,
        "-d",
        "2",
        "-f",
        "pprof",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_success(&out);
    let gunzip = Command::new("gzip")
        .args(["-dc"])
        .arg(&file)
        .output()
        .expect("gzip is needed to read the profile");
    assert!(gunzip.status.success(), "gzip -dc failed");
    let raw = String::from_utf8_lossy(&gunzip.stdout);
    // The profile's string table holds each label key and value once.
    assert!(raw.contains("cgroup"), "no cgroup label key in the profile");
    assert!(
        raw.contains(&cgroup.path()),
        "the cgroup path is not a label value in the profile"
    );

    let out = run_tripod(&[
        "--cgroup",
        &path,
        "-d",
        "2",
        "-f",
        "folded",
        "--folded-prefix",
        "cgroup",
        "-o",
        "-",
    ]);
    assert_success(&out);
    let stacks = parse_folded(&stdout_text(&out));
    assert!(!stacks.is_empty());
    for (frames, _) in &stacks {
        assert_eq!(frames[0], cgroup.path(), "{frames:?}");
        assert_eq!(frames[1], "chain_fp", "{frames:?}");
    }
    assert!(stacks
        .iter()
        .any(|(frames, _)| has_chain(&frames[1..], CHAIN)));
}

/// `unshare --fork --pid --mount-proc FIXTURE`, its host pid once it is ready.
fn start_in_namespaces(program: &str) -> (Child, u32) {
    if Command::new("unshare").arg("--help").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "unshare (util-linux) is needed for the namespace test in CI"
        );
    }
    let mut child = Command::new("unshare")
        .args(["--fork", "--pid", "--mount-proc", "--kill-child", program])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting unshare (util-linux) for the namespace test");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("reading the fixture's ready line");
    assert_eq!(line.trim(), "ready 1", "pid 1 of its own namespace");
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .expect("reading unshare's children");
    let host_pid = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("unshare has the fixture as its child");
    (child, host_pid)
}

/// A process in its own pid and mount namespaces is named, with its host
/// pid and its pid there (1).
#[test]
fn a_process_in_its_own_namespaces_shows_both_pids() {
    if !require_bpf() {
        return;
    }
    let _guard = serial();
    let (mut unshare, pid) = start_in_namespaces(CHAIN_FP);
    let pid_text = pid.to_string();
    let out = run_tripod(&["-p", &pid_text, "-d", "2", "-f", "json", "-o", "-"]);
    let log = run_tripod(&["-p", &pid_text, "-d", "1", "-o", "-"]);
    let _ = unshare.kill();
    let _ = unshare.wait();
    send_signal(pid, libc::SIGKILL);
    assert_success(&out);
    let processes = json_processes(&stdout_text(&out));
    assert_eq!(processes.len(), 1, "{processes:?}");
    assert_eq!(processes[0]["pid"], u64::from(pid));
    assert_eq!(processes[0]["ns_pid"], 1);
    assert_eq!(processes[0]["comm"], "chain_fp");
    assert_success(&log);
    let text = stdout_text(&log);
    assert!(
        text.contains(&format!("pid {pid} (chain_fp; ns pid 1)")),
        "{text}"
    );
}
