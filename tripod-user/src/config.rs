//! The validated run configuration. Plain data: nothing here knows about clap.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use tripod_common::{
    DEFAULT_COUNT_MAP_SIZE, DEFAULT_RING_BUFFER_SIZE, DEFAULT_STACK_COPY,
    DEFAULT_STACK_STORAGE_SIZE, DEFAULT_UNWIND_TABLE_BYTES,
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

/// What tripod-bpf was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Sample stacks for a while and report them.
    Record(Config),
    /// Take snapshots of every thread of one process.
    Dump(DumpConfig),
    /// Dump every thread of a core file.
    DumpCore(CoreDumpConfig),
    /// Render a JSON recording or dump made earlier, maybe on another machine.
    Report(ReportConfig),
    /// Show the hottest functions live, refreshed in place (`tripod-bpf top`).
    Top(TopConfig),
    /// Print a shell completion script or the man page (ready to write).
    Print(Vec<u8>),
}

/// `tripod-bpf report FILE...`: saved recordings and dumps, other tools'
/// dumps and logs with Python tracebacks, rendered again.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportConfig {
    /// The files (`-` for stdin), each read in turn into the same output.
    pub inputs: Vec<PathBuf>,
    /// What the files hold; None: told from each file's first KiB.
    pub kind: Option<InputKind>,
    /// `-q`: no note of lines skipped.
    pub quiet: bool,
    pub format: OutputFormat,
    /// `--folded-prefix`: what `-f folded` lines start with.
    pub folded_prefix: FoldedPrefix,
    pub output: OutputDest,
    /// Annotation rules tried before the built-in ones, applied again.
    pub rules: Option<PathBuf>,
}

/// The kinds of input `report` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// tripod-bpf's own `-f json` recordings and dumps.
    Json,
    /// gdb's `thread apply all bt [full]` (also pstack, and gdb logs with prompts).
    Gdb,
    /// elfutils' `eu-stack -p PID`.
    EuStack,
    /// `py-spy dump`.
    PySpy,
    /// `py-spy dump --json`.
    PySpyJson,
    /// Python tracebacks anywhere in a log.
    Traceback,
    /// tripod-bpf's own `-f log`.
    Log,
}

impl InputKind {
    pub const ALL: [InputKind; 7] = [
        InputKind::Json,
        InputKind::Log,
        InputKind::Gdb,
        InputKind::EuStack,
        InputKind::PySpy,
        InputKind::PySpyJson,
        InputKind::Traceback,
    ];

    /// The name `--input` takes.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Json => "json",
            InputKind::Gdb => "gdb",
            InputKind::EuStack => "eu-stack",
            InputKind::PySpy => "py-spy",
            InputKind::PySpyJson => "py-spy-json",
            InputKind::Traceback => "traceback",
            InputKind::Log => "log",
        }
    }

    /// What produces it, for the list of kinds understood.
    pub fn described(self) -> &'static str {
        match self {
            InputKind::Json => "tripod-bpf -f json",
            InputKind::Gdb => "gdb `thread apply all bt [full]` or pstack",
            InputKind::EuStack => "eu-stack -p PID",
            InputKind::PySpy => "py-spy dump",
            InputKind::PySpyJson => "py-spy dump --json",
            InputKind::Traceback => "logs with Python tracebacks",
            InputKind::Log => "tripod-bpf -f log",
        }
    }

    /// `json (tripod-bpf -f json), gdb (...), ...`.
    pub fn understood() -> String {
        InputKind::ALL
            .iter()
            .map(|k| format!("{} ({})", k.name(), k.described()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for InputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What recorded counts measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Samples of threads running on a CPU.
    Cpu,
    /// Microseconds threads spent switched out, by the stack they blocked in.
    OffCpu,
    /// Samples of every thread at the frequency, running or waiting.
    Wall,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cpu => "cpu",
            Mode::OffCpu => "off-cpu",
            Mode::Wall => "wall",
        }
    }

    /// The mode with this [`name`](Mode::name).
    pub fn from_name(name: &str) -> Option<Mode> {
        [Mode::Cpu, Mode::OffCpu, Mode::Wall]
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// What one count is: `samples` or `microseconds`.
    pub fn unit(self) -> &'static str {
        match self {
            Mode::OffCpu => "microseconds",
            Mode::Cpu | Mode::Wall => "samples",
        }
    }

    /// Whether threads are sampled on CPUs by the perf event.
    pub fn samples_on_cpu(self) -> bool {
        self != Mode::OffCpu
    }

    /// Whether threads are followed as they switch out and back in.
    pub fn tracks_switches(self) -> bool {
        self != Mode::Cpu
    }
}

/// Default `--min-block-us`: every wait the kernel reports, as bcc's offcputime.
pub const DEFAULT_MIN_BLOCK_US: u32 = 1;

/// `tripod-bpf dump`: snapshots of every thread of one process.
#[derive(Clone, Debug, PartialEq)]
pub struct DumpConfig {
    pub pid: u32,
    pub format: OutputFormat,
    pub output: OutputDest,
    /// Append a dump every interval until Ctrl-C or the process exits; `None`: one dump.
    pub every: Option<Duration>,
    /// Annotation rules tried before the built-in ones.
    pub rules: Option<PathBuf>,
    pub stacks: StackSelection,
    /// Bytes of user stack copied per thread.
    pub stack_copy_bytes: u32,
    pub python: PythonFrames,
    /// Show the local variables of Python frames (`--locals`).
    pub locals: bool,
    /// The largest target file read (`--max-file-size`), see [`crate::target_file`].
    pub max_file_size: u64,
}

/// `tripod-bpf dump --core FILE`: the threads of a core file, dumped.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreDumpConfig {
    pub core: PathBuf,
    /// The executable, in place of the path the core names (`--exe`).
    pub exe: Option<PathBuf>,
    /// Where the core's paths are looked up, as if it were `/` (`--sysroot`).
    pub sysroot: Option<PathBuf>,
    pub format: OutputFormat,
    pub output: OutputDest,
    pub rules: Option<PathBuf>,
    /// The largest target file read (`--max-file-size`), see [`crate::target_file`].
    pub max_file_size: u64,
    /// Python frames, read from the core's memory.
    pub python: PythonFrames,
    /// Python frames' local variables (`--locals`).
    pub locals: bool,
}

/// Whether and how Python frames are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonFrames {
    /// Not collected (`--no-python`).
    Off,
    /// In place of the interpreter's native frames, without the
    /// interpreter's call machinery between two Python frames (the default).
    Merged,
    /// Like `Merged`, every native frame kept (`--all-native-frames`).
    MergedAll,
    /// Python threads show only their Python frames (`--python-only`).
    Only,
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
    /// An interactive flame graph (SVG), drawn by inferno: one per run or dump.
    Svg,
    /// A gzipped pprof `profile.proto`, for `go tool pprof`, Pyroscope, Parca.
    Pprof,
    /// A speedscope JSON file: one sampled profile per thread.
    Speedscope,
}

impl OutputFormat {
    /// Formats whose file holds exactly one profile: no `--interval` or `--every`.
    pub fn single_profile(self) -> bool {
        matches!(
            self,
            OutputFormat::Svg | OutputFormat::Pprof | OutputFormat::Speedscope
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Log => "log",
            OutputFormat::Folded => "folded",
            OutputFormat::Json => "json",
            OutputFormat::Svg => "svg",
            OutputFormat::Pprof => "pprof",
            OutputFormat::Speedscope => "speedscope",
        }
    }

    /// The suffix of a temporary file in this format.
    pub fn suffix(self) -> &'static str {
        match self {
            OutputFormat::Log => ".log",
            OutputFormat::Folded => ".folded",
            OutputFormat::Json => ".json",
            OutputFormat::Svg => ".svg",
            OutputFormat::Pprof => ".pb.gz",
            OutputFormat::Speedscope => ".speedscope.json",
        }
    }
}

/// What folded stacks start with, before the frames (`--folded-prefix`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FoldedPrefix {
    /// The process name (with `--per-thread`, `name-pid/tid`): as always.
    #[default]
    Process,
    /// The container (`docker:0123456789ab`), else the cgroup path, then
    /// the process name.
    Container,
    /// The cgroup path, then the process name.
    Cgroup,
}

/// Where reports are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputDest {
    Stdout,
    File(PathBuf),
    /// A new `tripod_XXXXXX.log` in `$TMPDIR` (or /tmp), like Tripod.
    TempFile,
    /// Nowhere: `--push` without `-o` sends profiles only to the server.
    Discard,
}

/// `--push`: where and how to send each interval's profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushConfig {
    /// The server's base URL; `/ingest` is appended.
    pub url: String,
    pub format: PushFormat,
    /// The application name, before the profile type and labels.
    pub name: String,
    /// Labels added to every profile, after `host`.
    pub labels: Vec<(String, String)>,
    /// Extra HTTP headers (`X-Scope-OrgID`, `Authorization`).
    pub headers: Vec<(String, String)>,
}

/// The body format of `--push` requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFormat {
    /// One gzipped pprof profile per interval, labels on its samples.
    Pprof,
    /// Folded stacks, one request per process (its labels are in the name).
    Folded,
}

/// `--push` without `-i`: Pyroscope's own clients upload every 10 s.
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(10);

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
    /// The stack is walked in the kernel with each file's call frame
    /// information compiled to rows; stacks the rows do not cover are
    /// copied and unwound as with `Dwarf`.
    Tables,
    /// The default: `Tables` where the kernel can walk them, else `Dwarf`
    /// (see [`crate::live::settle_unwind`] and README.md).
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
            UnwindMode::Tables => "tables",
            UnwindMode::Auto => "auto",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub target: Target,
    /// `--cgroup`: only processes in these cgroup subtrees (paths as given,
    /// checked by `crate::preflight`), on top of `target`; empty: no filter.
    pub cgroups: Vec<PathBuf>,
    /// `--folded-prefix`: what `-f folded` lines start with.
    pub folded_prefix: FoldedPrefix,
    pub mode: Mode,
    /// `--mode off-cpu`: waits shorter than this are not counted.
    pub min_block_us: u32,
    /// Annotation rules tried before the built-in ones.
    pub rules: Option<PathBuf>,
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
    /// `--unwind-table-size` in 16-byte rows (`--unwind tables`).
    pub unwind_table_rows: u32,
    /// Bytes of user stack copied per sample (dwarf unwinding).
    pub stack_copy_bytes: u32,
    /// Bytes of the ring buffer that carries stack copies (a power of two).
    pub ring_buffer_size: u32,
    pub python: PythonFrames,
    /// The largest target file read (`--max-file-size`), see [`crate::target_file`].
    pub max_file_size: u64,
    /// Send each interval's profile to a Pyroscope-compatible server.
    pub push: Option<PushConfig>,
    /// No status line and no progress messages on stderr (`-q`).
    pub quiet: bool,
    /// `--sideband-source` (hidden): the records of mappings come from this
    /// source, and the run ends with a line measuring it; `None`: the perf
    /// sideband, unmeasured.
    pub measure_sideband: Option<SidebandSource>,
}

/// Where the records of mappings come from, for `cargo xtask bench --only sideband`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidebandSource {
    /// The perf sideband, as every run.
    Perf,
    /// The eBPF probe, read and counted but not used: samples are located
    /// from `/proc`, as without a sideband.
    Ebpf,
    /// Neither.
    Off,
}

impl Config {
    /// A configuration for `target` with every other setting at its default.
    pub fn new(target: Target) -> Self {
        Config {
            target,
            cgroups: Vec::new(),
            folded_prefix: FoldedPrefix::Process,
            mode: Mode::Cpu,
            min_block_us: DEFAULT_MIN_BLOCK_US,
            rules: None,
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
            unwind_table_rows: (DEFAULT_UNWIND_TABLE_BYTES / 16) as u32,
            stack_copy_bytes: DEFAULT_STACK_COPY,
            ring_buffer_size: DEFAULT_RING_BUFFER_SIZE,
            python: PythonFrames::Merged,
            max_file_size: crate::target_file::DEFAULT_MAX_FILE_SIZE,
            push: None,
            quiet: false,
            measure_sideband: None,
        }
    }
}

/// `tripod-bpf top`: sampling as a recording's, shown live instead of written.
#[derive(Clone, Debug, PartialEq)]
pub struct TopConfig {
    /// What to sample and how; its output settings are unused.
    pub record: Config,
    /// How often the view is refreshed (`--delay`).
    pub delay: Duration,
    /// What the percentages and rates are over (`--window`): the last
    /// refreshes that fit in it, at least one.
    pub window: Duration,
}

/// The longest `--duration`, `--interval`, `dump --every` (and `TRIPOD_INTERVAL`):
/// 365 days, in seconds. Anything longer is a typo, and far larger values do
/// not fit a `Duration` at all.
pub const MAX_SECONDS: f64 = 31_536_000.0;

/// The largest `--stack-storage-size`. Each of the two stack maps takes about
/// 1 KiB per entry (127 frames of 8 bytes and a header), so this is 1 GiB
/// each; the kernel refuses 2^31 and more outright (E2BIG).
pub const MAX_STACK_STORAGE_SIZE: u32 = 1 << 20;

/// The largest `--count-map-size`: about 100 bytes per entry (key, count and
/// the kernel's element header), some 400 MiB for each of the two maps.
pub const MAX_COUNT_MAP_SIZE: u32 = 1 << 22;

/// The largest `--ring-buffer-size`, 256 MiB. The kernel takes powers of two
/// below 4 GiB, but the buffer is allocated whole and mapped into tripod-bpf
/// twice over (1 GiB costs 2 GiB of resident memory).
pub const MAX_RING_BUFFER_SIZE: u32 = 1 << 28;

/// Most rows `--unwind-table-size` may ask for: 1 GiB of 16-byte rows.
pub const MAX_UNWIND_TABLE_ROWS: u64 = 1 << 26;

/// 99 Hz, not 100, so sampling does not run in lockstep with periodic timers.
pub const DEFAULT_FREQUENCY: u64 = 99;
