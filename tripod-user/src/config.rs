//! The validated run configuration. Plain data: nothing here knows about clap.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use tripod_common::{
    DEFAULT_COUNT_MAP_SIZE, DEFAULT_RING_BUFFER_SIZE, DEFAULT_STACK_COPY,
    DEFAULT_STACK_STORAGE_SIZE,
};

/// What to sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// These processes (tgids), all their threads.
    Pids(Vec<u32>),
    /// Every process on the machine except tripod-bpf itself.
    All,
    /// Start this command, sample it until it exits, return its exit status.
    Command(Vec<OsString>),
}

/// How reports are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Tripod-style tracebacks with counts.
    Log,
    /// `comm;outer;...;inner count`, for flamegraph.pl and inferno.
    Folded,
    /// One JSON document per report, described in README.md.
    Json,
}

/// Where reports are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputDest {
    Stdout,
    File(PathBuf),
    /// A new `tripod_XXXXXX.log` in `$TMPDIR` (or /tmp), like Tripod.
    TempFile,
}

/// Which halves of each stack to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackSelection {
    Both,
    UserOnly,
    KernelOnly,
}

impl StackSelection {
    pub fn user(self) -> bool {
        self != StackSelection::KernelOnly
    }
    pub fn kernel(self) -> bool {
        self != StackSelection::UserOnly
    }
}

/// How user stacks are unwound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindMode {
    /// The kernel walks frame pointers: cheapest, broken for code built without them.
    FramePointers,
    /// The top of the user stack is copied and unwound in userspace with
    /// `.eh_frame`/`.debug_frame`: complete stacks without frame pointers.
    Dwarf,
    /// The default: currently `Dwarf` for every process (see README.md).
    Auto,
}

impl UnwindMode {
    /// Whether samples carry a copy of the user stack.
    pub fn copies_stacks(self) -> bool {
        self != UnwindMode::FramePointers
    }

    pub fn name(self) -> &'static str {
        match self {
            UnwindMode::FramePointers => "fp",
            UnwindMode::Dwarf => "dwarf",
            UnwindMode::Auto => "auto",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub target: Target,
    /// Samples per second on each CPU.
    pub frequency: u64,
    /// Stop after this long; `None`: until Ctrl-C, SIGTERM or every target exited.
    pub duration: Option<Duration>,
    /// Write a report every interval; `None`: one report at the end.
    pub interval: Option<Duration>,
    pub output: OutputDest,
    pub format: OutputFormat,
    /// Keep the stacks of each thread apart instead of merging them per process.
    pub per_thread: bool,
    pub stacks: StackSelection,
    /// Sample the idle task (pid 0) too.
    pub include_idle: bool,
    /// Entries in each stack-trace map.
    pub stack_storage_size: u32,
    /// Entries in each count map.
    pub count_map_size: u32,
    pub unwind: UnwindMode,
    /// Bytes of user stack copied per sample (dwarf unwinding).
    pub stack_copy_bytes: u32,
    /// Bytes of the ring buffer that carries stack copies (a power of two).
    pub ring_buffer_size: u32,
}

impl Config {
    /// A configuration for `target` with every other setting at its default.
    pub fn new(target: Target) -> Self {
        Config {
            target,
            frequency: DEFAULT_FREQUENCY,
            duration: None,
            interval: None,
            output: OutputDest::TempFile,
            format: OutputFormat::Log,
            per_thread: false,
            stacks: StackSelection::Both,
            include_idle: false,
            stack_storage_size: DEFAULT_STACK_STORAGE_SIZE,
            count_map_size: DEFAULT_COUNT_MAP_SIZE,
            unwind: UnwindMode::Auto,
            stack_copy_bytes: DEFAULT_STACK_COPY,
            ring_buffer_size: DEFAULT_RING_BUFFER_SIZE,
        }
    }
}

/// 99 Hz, not 100, so sampling does not run in lockstep with periodic timers.
pub const DEFAULT_FREQUENCY: u64 = 99;
