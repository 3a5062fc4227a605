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

/// The start of each mapped file, as the core holds it, tells the file the process
/// mapped from another one put at its path since.
#[test]
fn mapped_files_are_checked_against_the_start_the_core_holds() {
    let dir = tempfile::tempdir().unwrap();
    let Some((path, _)) = gcore_of_sleep(dir.path()) else {
        return;
    };
    let core = Core::open(&path, File::open(&path).unwrap()).expect("a core");
    let exe = core.executable_path().expect("an executable").to_vec();
    let head = core.file_head(&exe);
    assert!(head.starts_with(b"\x7fELF"), "{} bytes", head.len());
    let exe_path = String::from_utf8(exe).unwrap();
    assert!(same_head(&File::open(&exe_path).unwrap(), &head));
    // Another program, and a file shorter than the head.
    assert!(!same_head(&File::open("/proc/self/exe").unwrap(), &head));
    let short = dir.path().join("short");
    std::fs::write(&short, &head[..16]).unwrap();
    assert!(!same_head(&File::open(&short).unwrap(), &head));
    // A path the core does not map has no head.
    assert!(core.file_head(b"/nowhere").is_empty());
}

/// The core's memory as the Python readers see it: dumped segments, and the files
/// where the core holds nothing (gcore leaves read-only mappings of files out).
#[test]
fn core_memory_reads_segments_and_mapped_files() {
    use crate::python::Memory as _;
    use std::os::unix::fs::FileExt as _;
    let dir = tempfile::tempdir().unwrap();
    let Some((path, _)) = gcore_of_sleep(dir.path()) else {
        return;
    };
    let core = std::sync::Arc::new(Core::open(&path, File::open(&path).unwrap()).unwrap());
    let thread = core.threads[0].clone();
    let libc = core
        .files
        .iter()
        .find(|f| String::from_utf8_lossy(&f.path).contains("libc.so") && f.file_offset > 0)
        .expect("libc is mapped")
        .clone();
    let libc_path = String::from_utf8(libc.path.clone()).unwrap();
    let memory = memory::CoreMemory::new(core.clone(), |path| File::open(lossy_path(path)).ok());
    // The stack, from the core.
    let mut stack = [0; 64];
    memory.read(thread.sp, &mut stack).unwrap();
    assert_eq!(stack.to_vec(), core.read_memory(thread.sp, 64));
    // A mapping of libc, as its file has it.
    let mut bytes = [0; 32];
    memory.read(libc.start, &mut bytes).unwrap();
    let mut expected = [0; 32];
    File::open(&libc_path)
        .unwrap()
        .read_exact_at(&mut expected, libc.file_offset)
        .unwrap();
    assert_eq!(bytes, expected);
    // Nothing at page zero; and without the files, only what the core holds.
    assert!(memory.read(0, &mut bytes).is_err());
    let bare = memory::CoreMemory::new(core.clone(), |_| None);
    let dumped = !core.read_memory(libc.start, 32).is_empty();
    assert_eq!(bare.read(libc.start, &mut bytes).is_ok(), dumped);
}

fn lossy_path(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}
