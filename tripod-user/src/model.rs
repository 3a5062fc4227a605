//! The shared model every stage works with: frames as reports show them,
//! why a frame is unknown, the local variables of Python frames, the
//! kernel's counters, and the pid exited processes are merged under. A leaf: it imports nothing from the
//! rest of the crate, so that the sampler, the unwinder, the aggregator, the
//! resolver, the report and the outputs can all speak of the same frame
//! without depending on each other.
use std::{fmt, sync::Arc, time::Duration};

use tripod_common::{
    errno::{EEXIST, EFAULT, ENOMEM},
    Counter,
};

/// The pid under which processes that exited during the run are reported:
/// their stacks are merged by process name (see [`crate::aggregate`]), so a
/// machine that starts thousands of short-lived processes does not grow the
/// sampler's memory without bound.
pub const EXITED_PID: u32 = u32::MAX;

/// `pid 42 (name)`, or `exited processes (name)` for [`EXITED_PID`].
pub fn process_label(pid: u32, comm: &str) -> String {
    if pid == EXITED_PID {
        format!("exited processes ({comm})")
    } else {
        format!("pid {pid} ({comm})")
    }
}

/// The cgroup (v2) a process was last sampled in, and the container its
/// path names, if any. Built by `crate::cgroup`, its text escaped there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cgroup {
    /// The path below the cgroup2 mount, as `/proc/PID/cgroup` shows it:
    /// `/system.slice/docker-<id>.scope`; `/` for the root.
    pub path: String,
    pub container: Option<Container>,
}

/// A container, as a cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Container {
    /// `docker`, `podman`, `containerd`, `cri-o`, `kubernetes` (a pod's
    /// container under the cgroupfs driver, whose runtime the path does not
    /// say), `lxc`, `nspawn`.
    pub runtime: String,
    /// The container id (64 hex digits for OCI runtimes), or its name
    /// (`lxc`, `nspawn`).
    pub id: String,
    /// The Kubernetes pod UID, with dashes, when the path is under a pod.
    pub pod: Option<String>,
}

impl Container {
    /// `docker:0123456789ab`: the runtime and the id, shortened to 12
    /// characters as `docker ps` shows it.
    pub fn short(&self) -> String {
        let id: String = self.id.chars().take(12).collect();
        format!("{}:{id}", self.runtime)
    }
}

impl Cgroup {
    /// What names the process's place: its container, else its cgroup path.
    pub fn label(&self) -> String {
        match &self.container {
            Some(container) => container.short(),
            None => self.path.clone(),
        }
    }
}

/// `pid 42 (name)` as [`process_label`], with what else is known of the
/// process: its pid in its own namespace and its container or cgroup,
/// `pid 42 (name; ns pid 1) in docker:0123456789ab`.
pub fn process_header(
    pid: u32,
    comm: &str,
    ns_pid: Option<u32>,
    cgroup: Option<&Cgroup>,
) -> String {
    let mut header = match ns_pid {
        Some(ns_pid) if pid != EXITED_PID => format!("pid {pid} ({comm}; ns pid {ns_pid})"),
        _ => process_label(pid, comm),
    };
    if let Some(cgroup) = cgroup {
        header.push_str(" in ");
        header.push_str(&cgroup.label());
    }
    header
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Code at an address.
    Code,
    /// The stack was cut off here; outer frames are missing.
    Truncated,
    /// This part of the stack could not be collected; `unknown` says why.
    Missing,
    /// A Python function: `function`, `file` and `line` come from the
    /// interpreter's code object, not from debug info.
    Python,
}

/// One line of a traceback.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub kind: FrameKind,
    /// The address as sampled (not adjusted for return addresses).
    pub address: Option<u64>,
    pub kernel: bool,
    /// The file (or `[vdso]`-style name) the address is in.
    pub module: Option<Arc<str>>,
    /// Offset of the address in `module`'s file.
    pub offset: Option<u64>,
    /// The GNU build id of `module`'s file, in hex, when it has one.
    pub build_id: Option<Arc<str>>,
    pub function: Option<Arc<str>>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    /// True for a function inlined into the frame before it.
    pub inlined: bool,
    /// Why `function` is missing, or what is missing for a marker frame.
    pub unknown: Option<Unknown>,
    /// Python frames: the line of source at `line`, stripped and escaped,
    /// when the file could be read (shown under the frame in the log).
    pub source: Option<String>,
}

impl Frame {
    /// A marker frame for a stack part that could not be collected.
    pub fn missing(kernel: bool, why: Unknown) -> Frame {
        Frame {
            kind: FrameKind::Missing,
            unknown: Some(why),
            ..Frame::code(kernel, None)
        }
    }

    pub fn truncated(kernel: bool) -> Frame {
        Frame {
            kind: FrameKind::Truncated,
            ..Frame::code(kernel, None)
        }
    }

    /// A Python frame with nothing known yet.
    pub fn python() -> Frame {
        Frame {
            kind: FrameKind::Python,
            ..Frame::code(false, None)
        }
    }

    /// A code frame with nothing known but its address.
    pub fn code(kernel: bool, address: Option<u64>) -> Frame {
        Frame {
            kind: FrameKind::Code,
            address,
            kernel,
            module: None,
            offset: None,
            build_id: None,
            function: None,
            file: None,
            line: None,
            inlined: false,
            unknown: None,
            source: None,
        }
    }

    /// The file name of the module, without its directory; a mapping
    /// without a file (`[vdso]`, `[anon:NAME]`) as it is.
    pub fn module_name(&self) -> Option<&str> {
        self.module.as_deref().map(|m| {
            if m.starts_with('[') {
                m
            } else {
                m.rsplit('/').next().unwrap_or(m)
            }
        })
    }

    /// A short name for flame graphs and summaries: the function, else
    /// `[module]`, else `[unknown]`.
    pub fn short_name(&self) -> String {
        match (self.kind, &self.function, self.module_name()) {
            (FrameKind::Truncated, ..) => "[truncated]".into(),
            (FrameKind::Missing, ..) => "[missing]".into(),
            (FrameKind::Python, Some(function), _) => match (&self.file, self.line) {
                (Some(file), Some(line)) => {
                    format!("{function} ({}:{line})", short_file(file))
                }
                (Some(file), None) => format!("{function} ({})", short_file(file)),
                (None, _) => function.to_string(),
            },
            (FrameKind::Python, None, _) => "[unknown Python frame]".into(),
            (_, Some(function), _) => function.to_string(),
            // `[anon]` is already bracketed.
            (_, None, Some(module)) if module.starts_with('[') => module.to_string(),
            (_, None, Some(module)) => format!("[{module}]"),
            (_, None, None) => "[unknown]".into(),
        }
    }
}

/// Why a frame has no function name, or what a marker frame stands for:
/// the `[unknown: ...]` of the log. Kept as data, as blazesym keeps its own
/// `Reason`, so that stages can tell the reasons apart; [`fmt::Display`]
/// gives the text every output shows. Paths and error messages in it come
/// from the target's files: whoever builds the reason escapes them (see
/// [`crate::text`]), as for any name entering the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Unknown {
    // What the symbolizer said about one address (blazesym's `Reason`).
    /// The address is in no mapping of the process.
    Unmapped,
    /// The file offset is in no section of code or data.
    InvalidFileOffset,
    /// The mapping has no file behind it.
    MissingComponent,
    /// The file has no symbols (or only irrelevant ones): stripped.
    MissingSyms,
    /// The address belongs to a kind of module that cannot be symbolized.
    Unsupported,
    /// No symbol of the file covers the address.
    UnknownAddr,
    /// Symbolizing this address failed; the rest of its batch did not.
    IgnoredError,
    /// A reason the symbolizer gained after this was written.
    OtherSymbolizerReason,

    // Where the address lies, found before anything is symbolized.
    /// A mapping without a file: `[anon:NAME]`, `[heap]`, JIT code.
    NoFile,
    /// The address is in no executable mapping of the process.
    NotExecutable,
    /// The process exited before its mappings could be read.
    ProcessExited,
    /// Sampled in a program the process has replaced since (`exec`), whose
    /// mappings are not known.
    ImageReplaced,
    /// The address was not symbolized (none was asked for it).
    NotSymbolized,

    // The module's file.
    /// The file at `path` was refused by the policy for target files
    /// (`crate::target_file`): its frames are not looked up at all.
    NotRead { path: String, why: FileRefused },
    /// No file of the module (this is its mapped path) could be opened.
    CannotOpen { path: String },
    /// The module's file is not there: a core file's executable or library
    /// looked up at `path` (on this machine, or under `--sysroot`).
    FileNotFound { path: String },
    /// The symbolizer failed on the whole file, with `error`.
    CannotRead { path: String, error: String },
    /// A lookup in the module at `path` took longer than `after` (a file it
    /// needs never answered): the module is not tried again.
    GaveUp { path: String, after: Duration },

    // Parts of a stack that were not collected (markers, not addresses).
    /// `bpf_get_stackid` failed with this errno (positive; see
    /// [`tripod_common::errno`]).
    StackNotCollected(i32),
    /// The stack id was valid when sampled but gone from the map when read.
    StackEvicted,
    /// The record carrying the stack was dropped: the ring buffer was full.
    StackDropped,
    /// The interpreter's memory could not be read past this point.
    PythonUnreadable,
    /// The Python frame chain led back into itself here.
    PythonLoop,
    /// The code object of a Python frame, at this address, could not be read.
    PythonCodeUnreadable(u64),

    /// A reason as read back from a JSON report: only its text is known.
    Text(String),
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fixed = match self {
            Unknown::Unmapped => "not mapped",
            Unknown::InvalidFileOffset => "offset not in any code section",
            Unknown::MissingComponent | Unknown::NoFile => "no file behind the mapping",
            Unknown::MissingSyms => "no symbols (stripped)",
            Unknown::Unsupported => "unsupported module type",
            Unknown::UnknownAddr => "no symbol covers the address",
            Unknown::IgnoredError => "symbolization failed",
            Unknown::OtherSymbolizerReason => "unknown",
            Unknown::NotExecutable => "not in any executable mapping",
            Unknown::ProcessExited => "process exited",
            Unknown::ImageReplaced => "program replaced by exec before its mappings were known",
            Unknown::NotSymbolized => "not symbolized",
            Unknown::StackEvicted => "stack evicted before it was read",
            Unknown::StackDropped => "stack dropped: ring buffer full",
            Unknown::PythonUnreadable => "Python frames unreadable",
            Unknown::PythonLoop => "Python frames unreadable: the frame chain loops",
            Unknown::Text(text) => text.as_str(),
            // The marker for a binary replaced on disk since it ran.
            Unknown::NotRead {
                path,
                why: FileRefused::Replaced,
            } => return write!(f, "file changed: {path} is no longer the mapped file"),
            Unknown::NotRead { path, why } => {
                f.write_str("not read: ")?;
                return why.describe(path, f);
            }
            Unknown::CannotOpen { path } => return write!(f, "cannot open {path}"),
            Unknown::FileNotFound { path } => return write!(f, "file not found: {path}"),
            Unknown::CannotRead { path, error } => return write!(f, "cannot read {path}: {error}"),
            Unknown::GaveUp { path, after } => {
                return write!(
                    f,
                    "gave up on {path} after {} s (a file it needs did not answer)",
                    after.as_secs()
                )
            }
            Unknown::StackNotCollected(errno) => return stack_error(*errno, f),
            Unknown::PythonCodeUnreadable(address) => {
                return write!(f, "code object at {address:#x} unreadable")
            }
        };
        f.write_str(fixed)
    }
}

/// What a failed `bpf_get_stackid` means, for the errno values it is known
/// to return.
fn stack_error(errno: i32, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match errno {
        EFAULT => f.write_str("stack not readable (EFAULT)"),
        EEXIST => f.write_str("stack not stored: hash collision (EEXIST)"),
        ENOMEM => f.write_str("stack not stored: stack map full (ENOMEM)"),
        errno => write!(f, "stack not collected: errno {errno}"),
    }
}

/// Why a target's file was not read: the policy of `crate::target_file`,
/// which names this type `Why`. Here because frames of the file carry it
/// ([`Unknown::NotRead`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileRefused {
    /// A FIFO, device, socket or directory: reading it could block or never end.
    NotRegular(&'static str),
    /// Larger than `--max-file-size` (`max`).
    TooLarge { size: u64, max: u64 },
    /// A symbolic link where the file itself was expected.
    Symlink,
    /// Another file than the one the process maps (replaced since).
    Replaced,
    /// The open or stat failed.
    Unreadable(String),
    /// There is no file at the path (a core file's mapped file looked up).
    NotFound,
}

impl FileRefused {
    /// The refusal of the file at `path` as one phrase: `PATH is a FIFO, not
    /// a regular file`. One wording for errors and for frames.
    pub fn describe(&self, path: impl fmt::Display, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileRefused::NotRegular(kind) => write!(f, "{path} is {kind}, not a regular file"),
            FileRefused::TooLarge { size, max } => write!(
                f,
                "{path} is {}, more than --max-file-size {}",
                human_size(*size),
                human_size(*max)
            ),
            FileRefused::Symlink => write!(f, "{path} is a symbolic link"),
            FileRefused::Replaced => write!(f, "{path} is no longer the mapped file"),
            FileRefused::Unreadable(error) => write!(f, "{path}: {error}"),
            FileRefused::NotFound => write!(f, "{path} not found"),
        }
    }
}

/// `1.5 GiB`, `20 KiB`, `512 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The local variables of one Python frame of a dumped thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameLocals {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
    /// Name and repr, in the code object's order; unbound ones are left out.
    pub variables: Vec<(String, String)>,
}

/// `--unwind tables`: one executable mapping of a process with its file's
/// compiled unwind rows, as the unwinder hands it to the sampler.
#[derive(Clone, Debug)]
pub struct TableMapping {
    pub start: u64,
    pub end: u64,
    /// What to subtract from an address to look it up in the rows.
    pub bias: u64,
    /// The file's id (shared by every process that maps it: its rows are
    /// loaded once).
    pub file: usize,
    pub rows: Arc<[tripod_common::UnwindRow]>,
}

/// `--unwind tables`: one file's compiled rows, loaded into the kernel
/// before any process that maps it is seen (see [`TableMapping::file`]).
#[derive(Clone, Debug)]
pub struct TableFile {
    pub file: usize,
    pub rows: Arc<[tripod_common::UnwindRow]>,
}

/// `--unwind tables`: how much of the kernel's row memory is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableUse {
    /// Files whose rows are loaded, and their rows.
    pub files: u64,
    pub rows: u64,
    /// Rows `--unwind-table-size` allows.
    pub capacity_rows: u64,
    /// Files left out because their rows did not fit: the bound was hit.
    pub files_over_bound: u64,
    /// Processes with more executable mappings than the kernel's entry holds.
    pub processes_with_too_many_mappings: u64,
}

/// Per-run totals of the kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::LEN as usize]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut delta = *self;
        for (d, e) in delta.0.iter_mut().zip(earlier.0) {
            *d = d.saturating_sub(e);
        }
        delta
    }
}

/// The file name as flame graphs show it: the standard library and
/// site-packages relative to `lib/python3.X/`, other paths as they are.
pub fn short_file(file: &str) -> &str {
    if let Some(at) = file.find("/lib/python3.") {
        let rest = &file[at + "/lib/python3.".len()..];
        if let Some(slash) = rest.find('/') {
            return &rest[slash + 1..];
        }
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame in a mapping without a file is named once, not `[[anon]]`.
    #[test]
    fn unnamed_frames_show_their_module_in_one_pair_of_brackets() {
        let frame = |module: &str| Frame {
            module: Some(module.into()),
            ..Frame::code(false, Some(1))
        };
        assert_eq!(frame("[anon]").short_name(), "[anon]");
        assert_eq!(frame("[anon:v8/code]").short_name(), "[anon:v8/code]");
        assert_eq!(frame("[vdso]").short_name(), "[vdso]");
        assert_eq!(frame("/usr/lib/libc.so.6").short_name(), "[libc.so.6]");
    }

    #[test]
    fn file_names_are_shortened_below_the_standard_library() {
        assert_eq!(
            short_file("/usr/lib/python3.11/json/decoder.py"),
            "json/decoder.py"
        );
        assert_eq!(
            short_file("/venv/lib/python3.11/site-packages/x/y.py"),
            "site-packages/x/y.py"
        );
        assert_eq!(short_file("/srv/app.py"), "/srv/app.py");
    }

    /// The texts of the reasons are the ones reports showed when reasons
    /// were strings: logs, folded stacks and JSON stay the same.
    #[test]
    fn reasons_show_as_they_always_did() {
        let path = || "/srv/lib.so".to_string();
        for (reason, text) in [
            (Unknown::NoFile, "no file behind the mapping"),
            (Unknown::NotExecutable, "not in any executable mapping"),
            (Unknown::ProcessExited, "process exited"),
            (Unknown::NotSymbolized, "not symbolized"),
            (Unknown::OtherSymbolizerReason, "unknown"),
            (
                Unknown::CannotOpen { path: path() },
                "cannot open /srv/lib.so",
            ),
            (
                Unknown::FileNotFound { path: path() },
                "file not found: /srv/lib.so",
            ),
            (
                Unknown::CannotRead {
                    path: "/proc/kallsyms".into(),
                    error: "permission denied".into(),
                },
                "cannot read /proc/kallsyms: permission denied",
            ),
            (
                Unknown::GaveUp {
                    path: path(),
                    after: Duration::from_millis(30_500),
                },
                "gave up on /srv/lib.so after 30 s (a file it needs did not answer)",
            ),
            (
                Unknown::StackNotCollected(EFAULT),
                "stack not readable (EFAULT)",
            ),
            (
                Unknown::StackNotCollected(7),
                "stack not collected: errno 7",
            ),
            (Unknown::StackDropped, "stack dropped: ring buffer full"),
            (
                Unknown::PythonCodeUnreadable(0x7f00),
                "code object at 0x7f00 unreadable",
            ),
            (Unknown::Text("anything at all".into()), "anything at all"),
        ] {
            assert_eq!(reason.to_string(), text, "{reason:?}");
        }
    }

    #[test]
    fn refused_files_are_named_with_why() {
        let not_read = |why| Unknown::NotRead {
            path: "/srv/x".into(),
            why,
        };
        for (why, text) in [
            (
                FileRefused::NotRegular("a FIFO"),
                "not read: /srv/x is a FIFO, not a regular file",
            ),
            (
                FileRefused::TooLarge {
                    size: 3 << 29,
                    max: 1 << 30,
                },
                "not read: /srv/x is 1.5 GiB, more than --max-file-size 1 GiB",
            ),
            (FileRefused::Symlink, "not read: /srv/x is a symbolic link"),
            (
                FileRefused::Replaced,
                "file changed: /srv/x is no longer the mapped file",
            ),
            (
                FileRefused::Unreadable("Permission denied (os error 13)".into()),
                "not read: /srv/x: Permission denied (os error 13)",
            ),
        ] {
            assert_eq!(not_read(why).to_string(), text);
        }
    }
}
