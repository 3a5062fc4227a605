//! Output files as root in directories other users can write to: never through a planted
//! link, never emptied by a run that fails, private (0600), replaced whole at the end; and
//! `report` reading its input as a stream.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use tripod_tests::*;

/// The uid of user `nobody`, who plants files in the tests.
const NOBODY: u32 = 65534;

/// A directory like /tmp: sticky and writable by everyone.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// Makes `path` (the link itself, not what it points to) belong to nobody.
fn give_to_nobody(path: &Path) {
    let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; lchown changes only its owner.
    let done = unsafe { libc::lchown(name.as_ptr(), NOBODY, NOBODY) };
    assert_eq!(
        done,
        0,
        "lchown {path:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Temporary files of ours left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.contains(".tripod-"))
        .collect()
}

/// Expects exit status 2 and one `tripod-bpf: error:` line mentioning `word`.
fn expect_refusal(out: &Output, shown: &str, word: &str) {
    let stderr = stderr_text(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{shown}: expected exit 2:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("tripod-bpf: error: "),
        "{shown}: expected one error line:\n{stderr}"
    );
    assert!(
        lines[0].contains(word),
        "{shown}: no {word:?} in {:?}",
        lines[0]
    );
}

/// A symlink planted by nobody in a sticky world-writable directory used to make `-o`
/// overwrite the root-owned file it points to (`fs.protected_symlinks=0` here); a file
/// planted there is refused too, as `fs.protected_regular` would, and so is a path through
/// a planted link to a directory.
#[test]
fn planted_links_and_files_in_shared_directories_are_refused() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let shared = shared_dir();
    let private = tempfile::tempdir().unwrap();
    let precious = private.path().join("precious");
    fs::write(&precious, "root's data\n").unwrap();
    let link = shared.path().join("link.log");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    give_to_nobody(&link);
    let planted = shared.path().join("planted.log");
    fs::write(&planted, "nobody's data\n").unwrap();
    give_to_nobody(&planted);
    // A link to a directory, followed on the way: shared/dir/precious is precious.
    let dir_link = shared.path().join("dir");
    std::os::unix::fs::symlink(private.path(), &dir_link).unwrap();
    give_to_nobody(&dir_link);
    let through = dir_link.join("precious");
    let input = private.path().join("empty.json");
    fs::write(&input, "").unwrap();
    let me = std::process::id().to_string();

    for (target, word) in [
        (&link, "symbolic link"),
        (&planted, "planted"),
        (&through, "goes through"),
    ] {
        let target_str = target.to_str().unwrap();
        for args in [
            vec!["--all", "-d", "1", "-o", target_str],
            vec!["dump", "--pid", &me, "-o", target_str],
            vec!["report", input.to_str().unwrap(), "-o", target_str],
        ] {
            expect_refusal(&run_tripod(&args), &format!("{args:?}"), word);
        }
    }
    assert_eq!(fs::read_to_string(&precious).unwrap(), "root's data\n");
    assert_eq!(fs::read_to_string(&planted).unwrap(), "nobody's data\n");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(leftovers(shared.path()), Vec::<String>::new());
}

/// The output used to be opened with O_TRUNC before the BPF programs load, so a run that
/// then failed left an emptied file. Too few descriptors make the load fail after that.
#[test]
fn a_run_that_fails_before_sampling_leaves_the_old_file() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.log");
    fs::write(&file, "the last good run\n").unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=16:16")
        .arg("--")
        .arg(tripod_bin())
        .args(["--pid", &fx.pid().to_string(), "-d", "1", "-q", "-o"])
        .arg(&file);
    let out = Tripod::spawn(cmd).wait(RUN_TIMEOUT);
    let stderr = stderr_text(&out);
    assert!(!out.status.success(), "the run succeeded:\n{stderr}");
    assert!(
        stderr.contains("Too many open files"),
        "failed for another reason:\n{stderr}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "the last good run\n");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// Files made with -o are 0600 (stacks tell what a process does), like the default log;
/// a reader sees the old file until the run ends, then the new one whole (a new inode).
#[test]
fn output_files_are_private_and_replaced_whole() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let pid = fx.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.folded");
    fs::write(&file, "old\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let old_inode = fs::metadata(&file).unwrap().ino();

    let mut run = Tripod::spawn(tripod_command(&[
        "--pid",
        &pid,
        "-d",
        "3",
        "-i",
        "0.5",
        "-f",
        "folded",
        "-q",
        "-o",
        file.to_str().unwrap(),
    ]));
    // Reports are due every 0.5 s from the start; none may show before the end. The
    // file is read every 100 ms for as long as the run lasts, however long it takes to start.
    let mut seen = Vec::new();
    let deadline = Instant::now() + RUN_TIMEOUT;
    while run.is_running() && Instant::now() < deadline {
        seen.push(fs::read_to_string(&file).unwrap());
        thread::sleep(Duration::from_millis(100));
    }
    let out = run.wait(RUN_TIMEOUT);
    assert_success(&out);
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains(";spin "), "no spin stacks:\n{text}");
    assert!(
        !text.contains("old"),
        "the old content is still there:\n{text}"
    );
    assert!(
        seen.iter().all(|s| s == "old\n" || *s == text),
        "a reader saw a partial file: {seen:?}"
    );
    assert!(
        seen.iter().filter(|s| *s == "old\n").count() >= 10,
        "{seen:?}"
    );
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_ne!(meta.ino(), old_inode, "the file was rewritten in place");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());

    let dump = dir.path().join("dump.log");
    let out = run_tripod(&["dump", "--pid", &pid, "-o", dump.to_str().unwrap()]);
    assert_success(&out);
    assert!(fs::read_to_string(&dump).unwrap().contains("spin"));
    let mode = fs::metadata(&dump).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "dump file mode {:o}", mode & 0o777);
}

/// Zero samples with -f svg used to exit 0 with an SVG saying so, over the old graph.
#[test]
fn a_flame_graph_of_nothing_fails_and_keeps_the_old_graph() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("starting sleep");
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("graph.svg");
    fs::write(&graph, "<svg>the last good graph</svg>\n").unwrap();
    let out = run_tripod(&[
        "--pid",
        &sleeper.id().to_string(),
        "-d",
        "1",
        "-f",
        "svg",
        "-q",
        "-o",
        graph.to_str().unwrap(),
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let stderr = stderr_text(&out);
    assert!(!out.status.success(), "exit 0 without samples:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tripod-bpf: error: "))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("no flame graph"),
        "expected one error line about the graph:\n{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&graph).unwrap(),
        "<svg>the last good graph</svg>\n"
    );
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// `report` used to hold the whole input (337 MB of JSON took 2 GB). It reads one line at
/// a time now: 80 MB of intervals take a few MiB, in append and in merged formats.
#[test]
fn report_streams_its_input() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.json");
    record_chain_to(&one, "json");
    let line = fs::read_to_string(&one).unwrap();
    assert_eq!(line.lines().count(), 1, "one document expected");
    let copies = 80_000_000 / line.len() + 1;
    let big = dir.path().join("big.json");
    fs::write(&big, line.repeat(copies)).unwrap();

    let single = run_tripod(&["report", one.to_str().unwrap(), "-f", "folded", "-o", "-"]);
    assert_success(&single);
    let total = |folded: &str| parse_folded(folded).iter().map(|(_, n)| n).sum::<u64>();
    let single_total = total(&stdout_text(&single));
    assert!(single_total > 0, "no samples in the recording");

    const BOUND_KIB: u64 = 48 * 1024;
    for format in ["folded", "svg"] {
        let out_file = dir.path().join(format!("out.{format}"));
        let (out, max_rss) = run_tripod_with_peak_rss(&[
            "report",
            big.to_str().unwrap(),
            "-f",
            format,
            "-o",
            out_file.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "report -f {format} failed");
        eprintln!(
            "report of {copies} lines ({} MB) -f {format}: {max_rss} KiB peak RSS",
            { line.len() * copies / 1_000_000 }
        );
        assert!(
            max_rss < BOUND_KIB,
            "-f {format}: peak RSS {max_rss} KiB for an 80 MB input"
        );
        let text = fs::read_to_string(&out_file).unwrap();
        match format {
            // Intervals stay apart in folded output: every copy is there.
            "folded" => assert_eq!(total(&text), single_total * copies as u64),
            // One graph of all of them, merged as they were read.
            _ => assert!(
                text.contains(&format!(
                    "total_samples=\"{}\"",
                    single_total * copies as u64
                )),
                "the merged graph does not count every copy"
            ),
        }
    }
}
