use std::{fs, io::Write as _, os::unix::fs::PermissionsExt as _};

use super::*;

fn fed(text: &[u8]) -> PerfMap {
    let mut map = PerfMap::default();
    map.feed(text, false);
    map
}

fn name(map: &PerfMap, address: u64) -> Option<&str> {
    map.lookup(address).map(|n| &**n)
}

#[test]
fn lines_are_start_size_and_the_rest_as_the_name() {
    assert_eq!(
        parse_line(b"7f5f85fc5b80 124 JS:^hotInner /srv/hot.js:6:18"),
        Some((0x7f5f85fc5b80, 0x124, "JS:^hotInner /srv/hot.js:6:18"))
    );
    assert_eq!(
        parse_line(b"0x10 0x8 py::f:/x.py"),
        Some((0x10, 8, "py::f:/x.py"))
    );
    assert_eq!(parse_line(b"  10\t8\tname  "), Some((0x10, 8, "name")));
    for bad in [
        &b"123"[..],
        b"10 8",
        b"10 8   ",
        b"xyz 8 f",
        b"10 yy f",
        b"10 8\xff f",
        b"10 1ffffffffffffffff f",
        b"",
    ] {
        assert_eq!(parse_line(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn bad_lines_are_skipped_and_counted() {
    let map = fed(b"1000 10 first\n\
          garbage here\n\
          2000 zz second\n\
          \n\
          3000 0 empty\n\
          ffffffffffffffff 10 wraps\n\
          4000 10 fourth\r\n\
          5000 10 evil\x1b]0;x\x07\n");
    assert_eq!(map.skipped, 4);
    assert_eq!(map.len(), 3);
    assert_eq!(name(&map, 0x1000), Some("first"));
    assert_eq!(name(&map, 0x100f), Some("first"));
    assert_eq!(name(&map, 0x1010), None);
    assert_eq!(name(&map, 0xfff), None);
    assert_eq!(name(&map, 0x4008), Some("fourth"));
    // Names are the target's: escaped as they enter.
    assert_eq!(name(&map, 0x5000), Some("evil\\x1b]0;x\\x07"));
}

#[test]
fn a_line_still_being_written_waits_for_the_next_read() {
    let mut map = PerfMap::default();
    let text = b"1000 10 first\n2000 10 sec";
    map.feed(text, false);
    assert_eq!(map.consumed, 14);
    assert_eq!(name(&map, 0x2000), None);
    map.feed(b"2000 10 second\n", false);
    assert_eq!(name(&map, 0x2000), Some("second"));
    assert_eq!(map.consumed, 29);
    assert_eq!(map.skipped, 0);
}

#[test]
fn an_endless_line_is_skipped_up_to_its_newline() {
    let mut map = PerfMap::default();
    let mut long = b"1000 10 ".to_vec();
    long.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
    map.feed(&long, false);
    assert_eq!((map.skipped, map.consumed), (1, long.len() as u64));
    // Its end arrives with the next read, and is not taken for a line.
    map.feed(b"yyy 2000 10 not-a-line\n3000 10 third\n", false);
    assert_eq!(map.skipped, 1);
    assert_eq!(name(&map, 0x2000), None);
    assert_eq!(name(&map, 0x3000), Some("third"));
}

#[test]
fn later_entries_win_where_they_overlap() {
    let map = fed(b"1000 100 old\n\
          1040 10 new\n\
          10f0 20 tail\n");
    assert_eq!(name(&map, 0x1000), Some("old"));
    assert_eq!(name(&map, 0x103f), Some("old"));
    assert_eq!(name(&map, 0x1040), Some("new"));
    assert_eq!(name(&map, 0x1050), Some("old"));
    assert_eq!(name(&map, 0x10f0), Some("tail"));
    assert_eq!(name(&map, 0x110f), Some("tail"));
    // The same name, written for every recompilation, is kept once.
    let map = fed(b"1000 10 f\n2000 10 f\n");
    assert!(Arc::ptr_eq(
        map.lookup(0x1000).unwrap(),
        map.lookup(0x2000).unwrap()
    ));
}

#[test]
fn the_status_file_gives_the_pid_inside_and_the_users() {
    let status = "Name:\tnode\nUid:\t1000\t1001\t1000\t1000\nGid:\t0\t0\t0\t0\n\
                  NStgid:\t4242\t7\nNSpid:\t4242\t7\n";
    let identity = Identity::parse(4242, status).unwrap();
    assert_eq!(identity.ns_pid, 7);
    assert_eq!(identity.uids, [1000, 1001]);
    assert!(identity.trusts_owner(0));
    assert!(identity.trusts_owner(1001));
    assert!(!identity.trusts_owner(1002));
    let old_kernel = "Uid:\t5\t5\t5\t5\n";
    assert_eq!(Identity::parse(9, old_kernel).unwrap().ns_pid, 9);
    assert_eq!(Identity::parse(9, "Name:\tx\n"), None);
}

/// A map read from a directory standing for a process's root.
struct Root {
    dir: tempfile::TempDir,
    identity: Identity,
    file: Option<(u64, u64)>,
    map: PerfMap,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        Root {
            dir,
            identity: Identity {
                ns_pid: 7,
                uids: [uid, uid],
            },
            file: None,
            map: PerfMap::default(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("tmp/perf-7.map")
    }

    fn append(&self, text: &[u8]) {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path())
            .unwrap();
        file.write_all(text).unwrap();
    }

    fn read(&mut self) -> Result<(), NotRead> {
        let path = Path::new("/tmp/perf-7.map");
        read_more(
            self.dir.path(),
            path,
            self.identity,
            &mut self.file,
            &mut self.map,
        )
    }
}

#[test]
fn maps_are_read_incrementally_and_again_when_rewritten() {
    let mut root = Root::new();
    assert!(matches!(root.read(), Err(NotRead::Refused(_))));
    root.append(b"1000 10 first\n2000 10 sec");
    root.read().unwrap();
    assert_eq!(name(&root.map, 0x1000), Some("first"));
    assert_eq!(name(&root.map, 0x2000), None);
    root.append(b"ond\n");
    root.read().unwrap();
    assert_eq!(name(&root.map, 0x2000), Some("second"));
    // Rewritten shorter: read again from the start.
    fs::write(root.path(), b"3000 10 third\n").unwrap();
    root.read().unwrap();
    assert_eq!(name(&root.map, 0x1000), None);
    assert_eq!(name(&root.map, 0x3000), Some("third"));
    // Replaced by another file, even a longer one: from the start too.
    fs::remove_file(root.path()).unwrap();
    root.append(b"4000 10 fourth\n5000 10 fifth and longer\n");
    root.read().unwrap();
    assert_eq!(name(&root.map, 0x3000), None);
    assert_eq!(name(&root.map, 0x5000), Some("fifth and longer"));
}

#[test]
fn a_huge_map_is_read_up_to_the_cap() {
    let mut root = Root::new();
    root.append(b"1000 10 first\n");
    // A sparse file far larger than the cap: its zeros are one endless line.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(root.path())
        .unwrap();
    file.set_len(4 * MAX_MAP_BYTES).unwrap();
    drop(file);
    root.read().unwrap();
    assert!(root.map.capped);
    assert_eq!(name(&root.map, 0x1000), Some("first"));
    assert_eq!(root.map.consumed, MAX_MAP_BYTES);
    assert_eq!(root.map.skipped, 1);
    // Nothing more is read.
    root.read().unwrap();
    assert_eq!(root.map.consumed, MAX_MAP_BYTES);
}

#[test]
fn links_fifos_and_other_users_maps_are_not_read() {
    let mut root = Root::new();
    fs::write(root.dir.path().join("tmp/elsewhere"), b"1000 10 planted\n").unwrap();
    std::os::unix::fs::symlink("/tmp/elsewhere", root.path()).unwrap();
    assert!(matches!(
        root.read(),
        Err(NotRead::Refused(Refusal {
            why: Why::Symlink,
            ..
        }))
    ));
    fs::remove_file(root.path()).unwrap();
    let c = std::ffi::CString::new(root.path().to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(matches!(
        root.read(),
        Err(NotRead::Refused(Refusal {
            why: Why::NotRegular(_),
            ..
        }))
    ));
    fs::remove_file(root.path()).unwrap();
    root.append(b"1000 10 planted\n");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o644)).unwrap();
    let mine = root.identity.uids[0];
    if mine == 0 {
        // As root: a map owned by another user than the process's.
        std::os::unix::fs::chown(root.path(), Some(4242), None).unwrap();
        root.identity.uids = [1000, 1000];
    } else {
        // Our own file, for a process of another user.
        root.identity.uids = [mine + 1, mine + 1];
    }
    assert!(matches!(root.read(), Err(NotRead::Untrusted { .. })));
    assert!(root.map.is_empty());
    if mine == 0 {
        // The process's own user, and root, are trusted.
        root.identity.uids = [1000, 4242];
        root.read().unwrap();
        assert_eq!(name(&root.map, 0x1000), Some("planted"));
    }
}

/// The whole way, for this test process: its `/tmp/perf-PID.map` through
/// `/proc/PID/root`, read again when a sample falls outside it.
#[test]
fn a_process_map_is_found_and_read_again_for_new_code() {
    let pid = std::process::id();
    let path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(path.clone());
    fs::write(&path, b"1000 10 JS:*first /srv/a.js:1:1\n").unwrap();
    let mut maps = JitMaps::new();
    let symbol = maps.lookup(pid, 0x1004, || None).unwrap();
    assert_eq!(&*symbol.function, "JS:*first /srv/a.js:1:1");
    assert_eq!(&*symbol.map, path.to_str().unwrap());
    assert_eq!(maps.lookup(pid, 0x2000, || None), None);
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"2000 10 second\n").unwrap();
    std::thread::sleep(REREAD_INTERVAL);
    assert_eq!(
        &*maps.lookup(pid, 0x2000, || None).unwrap().function,
        "second"
    );
    // Kept after the file is gone, until the process is forgotten.
    fs::remove_file(&path).unwrap();
    assert!(maps.lookup(pid, 0x1000, || None).is_some());
    maps.forget(pid);
    assert_eq!(maps.lookup(pid, 0x1000, || None), None);
}

/// A jitdump the process maps names code the perf map does not.
#[test]
fn a_jitdump_names_code_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit-7.dump");
    let mut bytes = Vec::new();
    for word in [dump::MAGIC, 1, 40, 62, 0, 7] {
        bytes.extend(word.to_le_bytes());
    }
    bytes.extend([0u8; 16]);
    let name = b"JS:*fromdump /srv/a.js:1:1\0";
    bytes.extend(0u32.to_le_bytes());
    bytes.extend(((16 + 40 + name.len()) as u32).to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend([0u8; 8]);
    for word in [0x9000u64, 0x9000, 0x40, 1] {
        bytes.extend(word.to_le_bytes());
    }
    bytes.extend(name);
    fs::write(&path, &bytes).unwrap();
    assert!(is_jitdump(path.to_str().unwrap()));
    assert!(!is_jitdump("/tmp/jit-x.dump") && !is_jitdump("/tmp/perf-7.map"));
    let opened = || {
        Some(DumpFile {
            file: fs::File::open(&path).unwrap(),
            shown: "/srv/jit-7.dump".into(),
        })
    };
    let mut maps = JitMaps::new();
    // Pid 0 has no perf map (and no /proc entry): the dump alone names.
    let symbol = maps.lookup(0, 0x9010, opened).unwrap();
    assert_eq!(&*symbol.function, "JS:*fromdump /srv/a.js:1:1");
    assert_eq!(&*symbol.map, "/srv/jit-7.dump");
}
