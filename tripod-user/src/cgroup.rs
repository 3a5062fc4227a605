//! Cgroups and containers: which cgroup v2 a sample was taken in, by the id
//! the kernel gives (`bpf_get_current_cgroup_id`), and which container that
//! cgroup's path names.
//!
//! - [`select`] checks a `--cgroup PATH` and gives its id, which the eBPF
//!   programs compare with each sampled thread's ancestors.
//! - [`CgroupNames`] maps ids back to paths. A cgroup's id is the inode
//!   number of its directory under the cgroup2 mount, so a walk of that
//!   mount finds every id there is; the walk is bounded (directories and
//!   depth), cached, and run again only for an id it has not seen, at most
//!   once per id.
//! - [`container_of`] is a pure function from a path to the container it
//!   names (docker, podman, containerd, cri-o, Kubernetes pods, LXC,
//!   systemd-nspawn), tested on the shapes those runtimes write.
//!
//! Cgroup names can be chosen by whoever may create cgroups (a delegated
//! subtree, a container's own): paths are escaped (see [`crate::text`]) as
//! they enter the model.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    error::UsageError,
    model::{Cgroup, Container},
    text::escape_controls,
};

/// Where cgroup v2 is mounted on unified machines; hybrid ones (v1
/// controllers at `/sys/fs/cgroup/*`) mount it at [`HYBRID_MOUNT`].
pub const MOUNT: &str = "/sys/fs/cgroup";
const HYBRID_MOUNT: &str = "/sys/fs/cgroup/unified";

/// `CGROUP2_SUPER_MAGIC` from `include/uapi/linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Most cgroup directories one walk of the mount looks at.
const MAX_WALKED: usize = 100_000;
/// Deepest directory one walk goes into.
const MAX_DEPTH: usize = 64;

/// Whether `path` is a directory of a cgroup v2 file system.
fn is_cgroup2_dir(path: &Path) -> bool {
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed is a valid `statfs` (plain integers).
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a `statfs` to write into.
    if unsafe { libc::statfs(name.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    stat.f_type as i64 == CGROUP2_SUPER_MAGIC && path.is_dir()
}

/// The cgroup v2 mount: [`MOUNT`], or [`HYBRID_MOUNT`] on machines that
/// mount v1 there; `None` without cgroup v2.
pub fn mount() -> Option<PathBuf> {
    [MOUNT, HYBRID_MOUNT]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| is_cgroup2_dir(path))
}

/// A cgroup named with `--cgroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// Its id: the inode number of its directory.
    pub id: u64,
    /// Its path below the mount (`/` for the root), escaped.
    pub path: String,
}

/// Checks `--cgroup PATH`: a directory of the cgroup v2 mount, named by
/// its full path (`/sys/fs/cgroup/system.slice`) or by its path below the
/// mount, as `/proc/PID/cgroup` shows it (`/system.slice`).
pub fn select(arg: &Path) -> Result<Selected, UsageError> {
    let Some(root) = mount() else {
        return Err(UsageError::new(format!(
            "--cgroup {}: no cgroup v2 hierarchy is mounted at {MOUNT}; \
             --cgroup needs cgroup v2 (the unified hierarchy)",
            arg.display()
        )));
    };
    let below = root.join(arg.strip_prefix("/").unwrap_or(arg));
    let candidates = [arg.to_path_buf(), below];
    let found = candidates
        .iter()
        .filter(|path| path.is_absolute() || path.starts_with(&root))
        .find(|path| is_cgroup2_dir(path));
    let Some(found) = found else {
        return Err(UsageError::new(format!(
            "--cgroup {}: not a cgroup v2 directory (neither it nor {} is one); \
             pass a directory under {} or a path as /proc/PID/cgroup shows it",
            escape_controls(&arg.display().to_string()),
            escape_controls(&candidates[1].display().to_string()),
            root.display()
        )));
    };
    let canonical = fs::canonicalize(found).unwrap_or_else(|_| found.clone());
    let meta = fs::metadata(&canonical)
        .map_err(|e| UsageError::new(format!("--cgroup {}: {e}", canonical.display())))?;
    Ok(Selected {
        id: meta.ino(),
        path: relative_path(&root, &canonical),
    })
}

/// `dir`'s path below `root`, starting with `/`, escaped.
fn relative_path(root: &Path, dir: &Path) -> String {
    let below = dir.strip_prefix(root).unwrap_or(dir);
    let text = format!("/{}", below.to_string_lossy());
    escape_controls(&text).into_owned()
}

/// Whether the cgroup at `path` is `ancestor` or below it (paths below the
/// mount, as [`Selected::path`] and `/proc/PID/cgroup` give them).
pub fn is_within(path: &str, ancestor: &str) -> bool {
    let ancestor = ancestor.trim_end_matches('/');
    path == ancestor
        || ancestor.is_empty()
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Cgroup ids mapped back to what they name, cached for the run.
#[derive(Debug)]
pub struct CgroupNames {
    /// The cgroup2 mount; `None` without cgroup v2 (nothing resolves).
    root: Option<PathBuf>,
    known: HashMap<u64, Arc<Cgroup>>,
    /// Ids a walk did not find (cgroups removed before it): never walked for again.
    missing: HashSet<u64>,
    /// Walks made, for tests and debug logs.
    pub walks: u64,
}

impl CgroupNames {
    /// For the machine's own cgroup v2 mount.
    pub fn new() -> Self {
        Self::with_root(mount())
    }

    /// For the cgroup hierarchy mounted at `root`.
    pub fn with_root(root: Option<PathBuf>) -> Self {
        CgroupNames {
            root,
            known: HashMap::new(),
            missing: HashSet::new(),
            walks: 0,
        }
    }

    /// The cgroup with id `id`; walks the mount again when the id is new.
    /// `None` for id 0 (unknown) and for a cgroup removed before it was seen.
    pub fn resolve(&mut self, id: u64) -> Option<Arc<Cgroup>> {
        if id == 0 || self.missing.contains(&id) {
            return None;
        }
        if let Some(found) = self.known.get(&id) {
            return Some(found.clone());
        }
        self.walk();
        match self.known.get(&id) {
            Some(found) => Some(found.clone()),
            None => {
                self.missing.insert(id);
                None
            }
        }
    }

    /// Reads every cgroup directory of the mount, breadth first, up to
    /// [`MAX_WALKED`] directories and [`MAX_DEPTH`] levels. Directories of
    /// cgroupfs are kernel data: listing them never blocks.
    fn walk(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        self.walks += 1;
        // Cgroups come and go (one per container, per systemd-run): the
        // cache starts over rather than grow without bound.
        if self.known.len() > 2 * MAX_WALKED {
            self.known.clear();
        }
        let Ok(meta) = fs::metadata(&root) else {
            return;
        };
        self.learn(meta.ino(), "/".to_string());
        let mut queue = std::collections::VecDeque::from([(root.clone(), 0usize)]);
        let mut walked = 0;
        while let Some((dir, depth)) = queue.pop_front() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                walked += 1;
                if walked > MAX_WALKED {
                    return;
                }
                let path = entry.path();
                self.learn(entry.ino(), relative_path(&root, &path));
                if depth + 1 < MAX_DEPTH {
                    queue.push_back((path, depth + 1));
                }
            }
        }
    }

    fn learn(&mut self, id: u64, path: String) {
        self.known.entry(id).or_insert_with(|| {
            Arc::new(Cgroup {
                container: container_of(&path),
                path,
            })
        });
    }
}

impl Default for CgroupNames {
    fn default() -> Self {
        Self::new()
    }
}

/// Most bytes of `/proc/PID/cgroup` read: one line on a v2-only machine,
/// a dozen on hybrid ones.
const MAX_PROC_CGROUP: u64 = 16 * 1024;

/// The cgroup v2 path of `pid` from `/proc/PID/cgroup` (the `0::PATH`
/// line), read bounded: for records of the task iterator (dumps, waits in
/// progress when tracking starts), which carry no cgroup id.
pub fn of_process(pid: u32) -> Option<Arc<Cgroup>> {
    let text = crate::process::read_proc_text(pid, "cgroup", MAX_PROC_CGROUP)?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let path = escape_controls(path).into_owned();
    Some(Arc::new(Cgroup {
        container: container_of(&path),
        path,
    }))
}

/// The container a cgroup path names, if it names one: the innermost
/// segment that does, with the Kubernetes pod UID of any segment above it.
///
/// Shapes recognised (`ID` is 64 hex digits):
/// - `docker-ID.scope` (systemd driver), `/docker/ID` (cgroupfs driver);
/// - `libpod-ID.scope`, `/libpod_parent/libpod-ID` (podman);
///   `libpod-conmon-ID.scope` is podman's monitor, not the container;
/// - `cri-containerd-ID.scope` (containerd), `crio-ID.scope` (cri-o);
/// - under `kubepods…`: `pod<UID>` (cgroupfs) or
///   `kubepods-<qos>-pod<UID with _>.slice` (systemd), then the container;
///   a bare `ID` there is a container whose runtime the path does not say;
/// - `lxc.payload.NAME` and `/lxc/NAME` (LXC), `systemd-nspawn@NAME.service`.
pub fn container_of(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod = segments.iter().find_map(|s| pod_uid(s));
    let (runtime, id) = (0..segments.len()).rev().find_map(|i| {
        let parent = i.checked_sub(1).map(|p| segments[p]);
        container_segment(segments[i], parent)
    })?;
    let runtime = match runtime {
        "oci" if pod.is_some() => "kubernetes",
        runtime => runtime,
    };
    Some(Container {
        runtime: runtime.to_string(),
        id: id.to_string(),
        pod,
    })
}

/// The runtime and id one segment names, `parent` being the segment above.
fn container_segment<'a>(
    segment: &'a str,
    parent: Option<&str>,
) -> Option<(&'static str, &'a str)> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    const PREFIXES: [(&str, &str); 4] = [
        ("docker-", "docker"),
        ("libpod-", "podman"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix).filter(|id| is_container_id(id)) {
            return Some((runtime, id));
        }
    }
    if is_container_id(segment) {
        return Some(match parent {
            Some("docker") => ("docker", segment),
            _ => ("oci", segment),
        });
    }
    if let Some(name) = segment.strip_prefix("lxc.payload.") {
        return (!name.is_empty()).then_some(("lxc", name));
    }
    if parent == Some("lxc") {
        return Some(("lxc", segment));
    }
    let nspawn = segment
        .strip_prefix("systemd-nspawn@")
        .and_then(|s| s.strip_suffix(".service"));
    nspawn.filter(|n| !n.is_empty()).map(|n| ("nspawn", n))
}

/// 64 hex digits: the id OCI runtimes give a container.
fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod UID a segment names: `pod<UID>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<UID, dashes as _>.slice` (systemd driver).
fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = match name.rfind("-pod") {
        Some(at) if name.starts_with("kubepods") => &name[at + "-pod".len()..],
        _ => name.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    let shape = uid.len() == 36
        && uid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    shape.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
    const POD: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";

    fn container(path: &str) -> Option<(String, String, Option<String>)> {
        container_of(path).map(|c| (c.runtime, c.id, c.pod))
    }

    fn found(
        runtime: &str,
        id: &str,
        pod: Option<&str>,
    ) -> Option<(String, String, Option<String>)> {
        Some((runtime.into(), id.into(), pod.map(Into::into)))
    }

    #[test]
    fn docker_and_podman_paths() {
        let systemd = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(container(&systemd), found("docker", ID, None));
        assert_eq!(
            container(&format!("/docker/{ID}")),
            found("docker", ID, None)
        );
        let rootless = format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        );
        assert_eq!(container(&rootless), found("podman", ID, None));
        assert_eq!(
            container(&format!("/machine.slice/libpod-{ID}.scope")),
            found("podman", ID, None)
        );
        assert_eq!(
            container(&format!("/libpod_parent/libpod-{ID}")),
            found("podman", ID, None)
        );
        // The monitor beside the container is not the container.
        assert_eq!(
            container(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn kubernetes_paths() {
        let underscored = POD.replace('-', "_");
        let containerd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(container(&containerd), found("containerd", ID, Some(POD)));
        let crio = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/crio-{ID}.scope"
        );
        assert_eq!(container(&crio), found("cri-o", ID, Some(POD)));
        let guaranteed = format!("/kubepods.slice/kubepods-pod{underscored}.slice/crio-{ID}.scope");
        assert_eq!(container(&guaranteed), found("cri-o", ID, Some(POD)));
        let cgroupfs = format!("/kubepods/burstable/pod{POD}/{ID}");
        assert_eq!(container(&cgroupfs), found("kubernetes", ID, Some(POD)));
        // A pod's own cgroup holds no container.
        assert_eq!(container(&format!("/kubepods/pod{POD}")), None);
        // Docker-in-Kubernetes (dockershim) keeps the pod.
        let dockershim = format!("/kubepods/besteffort/pod{POD}/docker-{ID}.scope");
        assert_eq!(container(&dockershim), found("docker", ID, Some(POD)));
    }

    #[test]
    fn other_runtimes_and_plain_cgroups() {
        assert_eq!(container("/lxc.payload.web1"), found("lxc", "web1", None));
        assert_eq!(container("/lxc/web1"), found("lxc", "web1", None));
        assert_eq!(
            container("/machine.slice/systemd-nspawn@build.service/payload"),
            found("nspawn", "build", None)
        );
        assert_eq!(container(&format!("/default/{ID}")), found("oci", ID, None));
        for plain in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/docker.service",
            "/system.slice/docker-notanid.scope",
            &format!("/docker/{}", &ID[..63]),
            "/kubepods.slice",
            "/init.scope",
        ] {
            assert_eq!(container(plain), None, "{plain}");
        }
    }

    #[test]
    fn subtrees_are_matched_by_whole_segments() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(is_within("/a/b", "/"));
        assert!(is_within("/a/b", "/a/"));
        assert!(!is_within("/ab", "/a"));
        assert!(!is_within("/a", "/a/b"));
    }

    #[test]
    fn pod_uids_need_their_shape() {
        assert_eq!(pod_uid(&format!("pod{POD}")), Some(POD.into()));
        assert_eq!(pod_uid("pod1234"), None);
        assert_eq!(pod_uid("podman"), None);
        assert_eq!(pod_uid("kubepods-besteffort.slice"), None);
    }

    #[test]
    fn labels_shorten_ids() {
        let cgroup = Cgroup {
            path: format!("/docker/{ID}"),
            container: container_of(&format!("/docker/{ID}")),
        };
        assert_eq!(cgroup.label(), format!("docker:{}", &ID[..12]));
        let plain = Cgroup {
            path: "/system.slice/cron.service".into(),
            container: None,
        };
        assert_eq!(plain.label(), "/system.slice/cron.service");
    }

    /// A cgroup of our own under the real mount, removed on drop.
    struct TestCgroup(PathBuf);

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }

    fn test_cgroup(name: &str) -> Option<TestCgroup> {
        let root = mount()?;
        let dir = root.join(format!("tripod-unit-{name}-{}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => Some(TestCgroup(dir)),
            Err(e) => {
                eprintln!(
                    "skipped: cannot create a cgroup under {}: {e}",
                    root.display()
                );
                None
            }
        }
    }

    #[test]
    fn ids_resolve_to_paths_of_the_real_hierarchy() {
        let Some(cgroup) = test_cgroup("resolve") else {
            return;
        };
        let id = fs::metadata(&cgroup.0).unwrap().ino();
        let mut names = CgroupNames::new();
        let name = format!("/{}", cgroup.0.file_name().unwrap().to_string_lossy());
        let resolved = names.resolve(id).expect("the new cgroup is found");
        assert_eq!(resolved.path, name);
        assert_eq!(resolved.container, None);
        // Cached: no second walk for a known id, one for an unknown one,
        // and none again for the same unknown id.
        let walks = names.walks;
        assert!(names.resolve(id).is_some());
        assert_eq!(names.walks, walks);
        assert!(names.resolve(u64::MAX - 7).is_none());
        assert!(names.resolve(u64::MAX - 7).is_none());
        assert_eq!(names.walks, walks + 1);
        assert!(names.resolve(0).is_none());

        let selected = select(&cgroup.0).expect("a cgroup directory");
        assert_eq!(
            selected,
            Selected {
                id,
                path: name.clone()
            }
        );
        assert_eq!(select(Path::new(&name)).unwrap().id, id);
    }

    #[test]
    fn only_cgroup_directories_are_selected() {
        if mount().is_none() {
            eprintln!("skipped: no cgroup v2 here");
            return;
        }
        for bad in ["/tmp", "/nonexistent-tripod", "/proc/self"] {
            let e = select(Path::new(bad)).unwrap_err();
            assert!(e.0.contains("not a cgroup v2 directory"), "{bad}: {e}");
            assert!(!e.0.contains('\n'));
        }
        // The root itself is a cgroup, by either name.
        assert_eq!(select(Path::new("/")).unwrap().path, "/");
        assert_eq!(select(&mount().unwrap()).unwrap().path, "/");
    }

    #[test]
    fn our_own_cgroup_is_read_from_proc() {
        let Some(own) = of_process(std::process::id()) else {
            eprintln!("skipped: no cgroup v2 line in /proc/self/cgroup");
            return;
        };
        assert!(own.path.starts_with('/'), "{own:?}");
    }
}
