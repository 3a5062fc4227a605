//! The note parser on cores gdb makes of a child of this test process: a
//! real `gcore`, never hand-written bytes.
use super::*;

/// A core of a `sleep` made by gdb's `gcore`, and the sleep's pid; `None`
/// (with the reason printed) when gdb is missing outside CI.
fn gcore_of_sleep(dir: &Path) -> Option<(PathBuf, u32)> {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep starts");
    let pid = child.id();
    // Until the exec is done, the core would be of this test's fork.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "sleep")
    {
        assert!(std::time::Instant::now() < deadline, "sleep never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let prefix = dir.join("core");
    let made = std::process::Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .output();
    let _ = child.kill();
    let _ = child.wait();
    match made {
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => panic!("gcore is missing in CI"),
        Err(e) => {
            eprintln!("skipped: gcore (gdb) is not installed: {e}");
            None
        }
        Ok(out) => {
            let path = dir.join(format!("core.{pid}"));
            assert!(
                path.exists(),
                "gcore made no core: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some((path, pid))
        }
    }
}

use std::path::PathBuf;

#[test]
fn a_gcore_gives_its_thread_name_files_and_stack() {
    let dir = tempfile::tempdir().unwrap();
    let Some((path, pid)) = gcore_of_sleep(dir.path()) else {
        return;
    };
    let core = Core::open(&path, File::open(&path).unwrap()).expect("a core");
    assert!(core.missing.is_empty(), "{:?}", core.missing);
    assert_eq!(core.pid, pid);
    assert_eq!(core.name.as_deref(), Some(&b"sleep"[..]));
    assert_eq!(core.threads.len(), 1, "{:?}", core.threads);
    let thread = &core.threads[0];
    assert_eq!(thread.tid, pid);
    // In clock_nanosleep (230) or nanosleep (35), by the C library's choice.
    assert!(
        matches!(thread.syscall, Some(230 | 35)),
        "{:?}",
        thread.syscall
    );
    // The executable and the C library, their code executable.
    let exe = String::from_utf8_lossy(core.executable_path().expect("an executable"));
    assert!(exe.ends_with("/sleep"), "{exe}");
    let libc = core
        .files
        .iter()
        .find(|f| String::from_utf8_lossy(&f.path).contains("libc.so"))
        .expect("libc is mapped");
    assert!(core
        .files
        .iter()
        .any(|f| f.path == libc.path && f.executable));
    assert!(core.files.iter().all(|f| f.start < f.end));
    // The stack is in the core, read from the stack pointer up.
    let stack = core.read_memory(thread.sp, 4096);
    assert_eq!(stack.len(), 4096);
    assert!(
        core.read_memory(0, 16).is_empty(),
        "page zero is mapped by nobody"
    );
    assert!(core.vdso.is_some_and(|(start, end)| start < end));
}

#[test]
fn a_cut_core_says_what_it_lacks_and_other_files_are_no_core() {
    let dir = tempfile::tempdir().unwrap();
    let Some((path, _)) = gcore_of_sleep(dir.path()) else {
        return;
    };
    // gdb writes the notes last: a gcore cut anywhere has no thread left,
    // and the error says why. (The kernel writes them first: its cut cores
    // keep their threads; see the end-to-end tests.)
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let why = Core::open(&cut, File::open(&cut).unwrap()).unwrap_err().0;
    assert!(
        why.contains("no thread") && why.contains("notes cut off"),
        "{why}"
    );
    // A program is an ELF file but no core; a text file is neither.
    let exe = Path::new("/proc/self/exe");
    let why = Core::open(exe, File::open(exe).unwrap()).unwrap_err().0;
    assert!(why.contains("not a core"), "{why}");
    let text = dir.path().join("text");
    std::fs::write(&text, "not a core at all\n").unwrap();
    let why = Core::open(&text, File::open(&text).unwrap()).unwrap_err().0;
    assert!(why.contains("is not an ELF core file"), "{why}");
}
