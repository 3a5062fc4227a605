//! The shared model every stage works with: frames as reports show them,
//! the local variables of Python frames, the kernel's counters, and the pid
//! exited processes are merged under. A leaf: it imports nothing from the
//! rest of the crate, so that the sampler, the unwinder, the aggregator, the
//! resolver, the report and the outputs can all speak of the same frame
//! without depending on each other.
use tripod_common::Counter;

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
    pub module: Option<String>,
    /// Offset of the address in `module`'s file.
    pub offset: Option<u64>,
    /// The GNU build id of `module`'s file, in hex, when it has one.
    pub build_id: Option<String>,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// True for a function inlined into the frame before it.
    pub inlined: bool,
    /// Why `function` is missing, or what is missing for a marker frame.
    pub unknown: Option<String>,
    /// Python frames: the line of source at `line`, stripped and escaped,
    /// when the file could be read (shown under the frame in the log).
    pub source: Option<String>,
}

impl Frame {
    /// A marker frame for a stack part that could not be collected.
    pub fn missing(kernel: bool, why: String) -> Frame {
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

    /// The file name of the module, without its directory.
    pub fn module_name(&self) -> Option<&str> {
        self.module
            .as_deref()
            .map(|m| m.rsplit('/').next().unwrap_or(m))
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
                (None, _) => function.clone(),
            },
            (FrameKind::Python, None, _) => "[unknown Python frame]".into(),
            (_, Some(function), _) => function.clone(),
            (_, None, Some(module)) => format!("[{module}]"),
            (_, None, None) => "[unknown]".into(),
        }
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
}
