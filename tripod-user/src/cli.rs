//! Command-line parsing: the only module that sees clap. It turns arguments
//! into a plain [`Config`] and rejects combinations clap cannot express.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use tripod_common::{
    DEFAULT_COUNT_MAP_SIZE, DEFAULT_RING_BUFFER_SIZE, DEFAULT_STACK_COPY,
    DEFAULT_STACK_STORAGE_SIZE, MAX_DUMP_STACK_COPY, MAX_STACK_COPY,
};

use crate::{
    config::{
        Command, Config, CoreDumpConfig, DumpConfig, FoldedPrefix, InputKind, Mode, OutputDest,
        OutputFormat, PushConfig, PushFormat, PythonFrames, ReportConfig, SidebandSource,
        StackSelection, Target, TopConfig, UnwindMode, DEFAULT_FREQUENCY, DEFAULT_MIN_BLOCK_US,
        DEFAULT_PUSH_INTERVAL, MAX_COUNT_MAP_SIZE, MAX_RING_BUFFER_SIZE, MAX_SECONDS,
        MAX_STACK_STORAGE_SIZE, MAX_UNWIND_TABLE_ROWS,
    },
    error::UsageError,
};

const EXAMPLES: &str = "\
Examples:
  On-CPU (the default mode), one process, the whole machine, or a command:
    sudo tripod-bpf -p 4242 -d 10                    10 s of tracebacks in a new $TMPDIR/tripod_XXXXXX.log
    sudo tripod-bpf --all -d 10 -f svg -o all.svg    a flame graph of every process
    sudo tripod-bpf -p 4242 -i 5                     append a report every 5 s (Ctrl-C to stop)
    sudo tripod-bpf -f json -o run.json -- ./myprog  start ./myprog, sample it until it exits
  Off-CPU and wall-clock time:
    sudo tripod-bpf -p 4242 --mode off-cpu -d 10     where its threads wait, in microseconds
    sudo tripod-bpf -p 4242 --mode wall --per-thread every thread, running or waiting
  Formats for other tools:
    sudo tripod-bpf -p 4242 -f folded -o out.folded  flamegraph.pl out.folded > out.svg
    sudo tripod-bpf -p 4242 -f pprof -o cpu.pb.gz    go tool pprof -top cpu.pb.gz
    sudo tripod-bpf -p 4242 -f speedscope -o p.json  open p.json at www.speedscope.app
  Python, thread dumps, offline reports, continuous profiling:
    sudo tripod-bpf -p 4242 --python-only            Python frames only (CPython 3.6 and later)
    sudo tripod-bpf dump -p 4242                     every thread's stack now, grouped
    tripod-bpf report run.json -f svg -o run.svg     render a saved JSON recording anywhere
    sudo tripod-bpf --all --push http://pyroscope:4040   a profile every 10 s to Pyroscope";

const REPORT_EXAMPLES: &str = "\
Examples:
  sudo tripod-bpf -p 4242 -d 30 -f json -o run.json     record here...
  tripod-bpf report run.json                            ...read it there, as tracebacks
  tripod-bpf report run.json -f svg -o run.svg          a flame graph of it
  tripod-bpf report run.json -f pprof -o run.pb.gz      then: go tool pprof -top run.pb.gz
  tripod-bpf report dumps.json --rules ours.toml        dumps, annotated with your rules";

const DUMP_EXAMPLES: &str = "\
Examples:
  sudo tripod-bpf dump -p 4242                     grouped stacks of every thread, to stdout
  sudo tripod-bpf dump -p 4242 --json              the same as JSON
  sudo tripod-bpf dump -p 4242 --every 5           append a dump to a log every 5 s (a watchdog)
  sudo tripod-bpf dump -p 4242 --rules rules.toml  with your own annotation rules first";

const TOP_EXAMPLES: &str = "\
Examples:
  sudo tripod-bpf top -p 4242                      the hottest functions of one process, live
  sudo tripod-bpf top --all --window 5             the whole machine, rates over the last 5 s
  sudo tripod-bpf top -p 4242 | tee top.log        no terminal: a plain table every second
Keys: 1-4 sort by own%, total%, own time, total time; s functions/stacks; p/t filter by
process/thread; space pause; r reset; q or Ctrl-C quit.";

/// Sample kernel and user stacks with eBPF and write Tripod-style tracebacks,
/// folded stacks or JSON.
#[derive(Debug, Parser)]
#[command(
    name = "tripod-bpf",
    version,
    after_help = EXAMPLES,
    allow_negative_numbers = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    subcommand: Option<Subcommands>,

    #[command(flatten)]
    record: RecordArgs,
}

#[derive(Debug, Subcommand)]
enum Subcommands {
    /// Print the stack of every thread of a process, grouped by stack, without stopping it.
    #[command(after_help = DUMP_EXAMPLES)]
    Dump(DumpArgs),
    /// Render a JSON recording or dump made earlier (maybe on another machine) in any format.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Show the hottest functions (or stacks) live, refreshed every second, like py-spy top.
    #[command(after_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// Print a completion script for SHELL, e.g. `tripod-bpf completions bash > /etc/bash_completion.d/tripod-bpf`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `tripod-bpf man > /usr/local/share/man/man1/tripod-bpf.1`.
    Man,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Files to read (`-` for stdin): `-f json` or `dump --json` output, gdb `thread apply all
    /// bt [full]` or pstack output, `eu-stack -p PID`, `py-spy dump [--json]`, or any log with
    /// Python tracebacks (and tripod-bpf's own `-f log` of them).
    #[arg(value_name = "FILE", required = true)]
    inputs: Vec<PathBuf>,

    /// What the files hold [default: told from each file's first KiB].
    #[arg(long, value_enum, value_name = "KIND")]
    input: Option<InputArg>,

    /// Say nothing of lines that could not be read.
    #[arg(short, long)]
    quiet: bool,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = FormatArg::Log)]
    format: FormatArg,

    /// What each folded line starts with, before the frames.
    #[arg(long, value_enum, default_value_t = FoldedPrefixArg::Process)]
    folded_prefix: FoldedPrefixArg,

    /// Write to PATH [default: stdout].
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// Annotation rules (TOML) tried before the built-in ones; see README.md.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DumpArgs {
    /// The process to dump.
    #[arg(short, long, value_name = "PID", required_unless_present = "core")]
    pid: Option<u32>,

    /// Dump the threads of a core file (a kernel core dump or gdb's gcore) instead of a
    /// process; needs no root. Native stacks, with Python frames (and --locals) read from
    /// the core's memory.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["pid", "every", "kernel_only", "user_only"])]
    core: Option<PathBuf>,

    /// With --core: the core's executable, when it is not at the path the core names.
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,

    /// With --core: look the core's files up under DIR, as if it were `/` (a copy of the
    /// machine's files the core was made on).
    #[arg(long, value_name = "DIR")]
    sysroot: Option<PathBuf>,

    /// Write JSON (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    json: bool,

    /// Output format: `log` groups threads by stack as text; `folded`, `svg`, `pprof` and
    /// `speedscope` count threads per stack; `json` has everything.
    #[arg(short, long, value_enum, default_value_t = FormatArg::Log)]
    format: FormatArg,

    /// Append a dump every SECS seconds until Ctrl-C or the process exits (at most 365 days).
    #[arg(short, long, value_name = "SECS")]
    every: Option<f64>,

    /// Write to PATH (`-` for stdout) [default: stdout; with --every, a new tripod_XXXXXX.log in $TMPDIR].
    // No TRIPOD_OUTPUT here: set for recordings, it would send a dump over their log.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// Annotation rules (TOML) tried before the built-in ones; see README.md.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,

    /// Read only user-space stacks.
    #[arg(long, conflicts_with = "kernel_only")]
    user_only: bool,

    /// Read only kernel stacks.
    #[arg(long)]
    kernel_only: bool,

    /// Bytes of user stack read per thread (at most 24576). Deeper stacks end in [truncated].
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_STACK_COPY)]
    stack_copy_bytes: u32,

    /// Python processes: show each Python frame's local variables (simple values, and the
    /// type and length of others; read from memory, nothing runs in the process).
    #[arg(long, conflicts_with_all = ["no_python", "kernel_only"])]
    locals: bool,

    #[command(flatten)]
    python: PythonArgs,

    #[command(flatten)]
    files: FileArgs,
}

/// Files read on behalf of targets, for recording and dumps.
#[derive(Debug, Args)]
struct FileArgs {
    /// The largest binary or debug file read for symbols and unwinding (K, M, G suffixes);
    /// larger ones are named in the output and left unread.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_file_size)]
    max_file_size: u64,
}

fn parse_file_size(text: &str) -> Result<u64, String> {
    match crate::target_file::parse_size(text) {
        Some(0) | None => Err(format!("expected a size such as 512M or 2G, got {text:?}")),
        Some(bytes) => Ok(bytes),
    }
}

/// Python frames, for recording and dumps.
#[derive(Debug, Args)]
struct PythonArgs {
    /// Python threads show only their Python frames, not the native and kernel ones.
    #[arg(long, conflicts_with_all = ["no_python", "kernel_only"])]
    python_only: bool,

    /// Do not read Python frames: Python processes show their native stacks.
    #[arg(long)]
    no_python: bool,

    /// Keep every native frame between two Python frames. By default the interpreter's own
    /// call machinery there (_PyEval_Vector, PyObject_Vectorcall, method_vectorcall, ...) is
    /// left out; C functions called from Python always stay.
    #[arg(long, conflicts_with_all = ["no_python", "python_only"])]
    all_native_frames: bool,
}

impl PythonArgs {
    fn frames(&self) -> PythonFrames {
        match (self.no_python, self.python_only, self.all_native_frames) {
            (true, _, _) => PythonFrames::Off,
            (false, true, _) => PythonFrames::Only,
            (false, false, true) => PythonFrames::MergedAll,
            (false, false, false) => PythonFrames::Merged,
        }
    }
}

/// `tripod-bpf top`: what to sample, as for recording, and how to show it.
#[derive(Debug, Args)]
struct TopArgs {
    #[command(flatten)]
    sampling: SamplingArgs,

    /// Refresh the view every SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    delay: f64,

    /// Percentages and rates are over the last SECS seconds [default: the last refresh].
    #[arg(long, value_name = "SECS")]
    window: Option<f64>,

    /// Start COMMAND and show it until it exits (then `q` quits).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

impl TopArgs {
    fn into_config(self) -> Result<TopConfig, UsageError> {
        let target = self.sampling.target(&self.command)?;
        let frequency = self.sampling.frequency()?;
        let delay = positive_seconds(Some(self.delay), "--delay")?.expect("given");
        let window = positive_seconds(self.window, "--window")?.unwrap_or(delay);
        if window < delay {
            return Err(UsageError::new(format!(
                "--window ({} s) is shorter than one refresh (--delay {} s); pass a longer window",
                window.as_secs_f64(),
                delay.as_secs_f64()
            )));
        }
        let sampling = self.sampling;
        let mut record = Config::new(target);
        record.frequency = frequency;
        record.mode = sampling.mode.into();
        record.unwind = sampling.unwind.into();
        record.stacks = stack_selection(sampling.user_only, sampling.kernel_only);
        record.python = sampling.python.frames();
        record.max_file_size = sampling.files.max_file_size;
        record.cgroups = sampling.cgroup;
        // The view filters by thread, so stacks are kept per thread.
        record.per_thread = true;
        // Nothing is written: the view is the output, and the status line
        // would scribble over it.
        record.output = OutputDest::Discard;
        record.quiet = true;
        Ok(TopConfig {
            record,
            delay,
            window,
        })
    }
}

/// What to sample and how: shared by recording and `top`, so both take the
/// same options with the same meaning.
#[derive(Debug, Args)]
struct SamplingArgs {
    /// Sample these processes (all their threads); comma-separated or repeated.
    #[arg(short, long, value_name = "PID", value_delimiter = ',')]
    pid: Vec<u32>,

    /// Sample every process on the machine (except tripod-bpf itself).
    #[arg(short, long)]
    all: bool,

    /// Sample only processes in this cgroup v2 or below it (filtered in the kernel); repeat
    /// it for more. PATH is a directory under /sys/fs/cgroup or a path as /proc/PID/cgroup
    /// shows it (/system.slice/docker-ID.scope). Alone it samples every process there; with
    /// --pid or a command, only those that are also in it.
    #[arg(long, value_name = "PATH")]
    cgroup: Vec<PathBuf>,

    /// Samples per second on each CPU.
    #[arg(short = 'F', long, value_name = "HZ", env = "TRIPOD_FREQUENCY", default_value_t = DEFAULT_FREQUENCY)]
    frequency: u64,

    /// What to measure: `cpu` samples threads on CPUs; `off-cpu` counts the microseconds
    /// threads spend switched out, by the stack they wait in; `wall` samples every thread at
    /// the frequency, running or waiting.
    #[arg(short, long, value_enum, default_value_t = ModeArg::Cpu)]
    mode: ModeArg,

    /// How to unwind user stacks: `dwarf` copies the top of each user stack and unwinds it
    /// with .eh_frame (complete stacks without frame pointers); `fp` walks frame pointers
    /// in the kernel (cheaper, broken for code built without them); `tables` walks the
    /// stack in the kernel with each file's .eh_frame compiled to rows, copying only the
    /// stacks they do not cover; `auto` is tables, or dwarf on kernels before 5.17.
    #[arg(long, value_enum, default_value_t = UnwindArg::Auto)]
    unwind: UnwindArg,

    /// Collect only user-space stacks.
    #[arg(long, conflicts_with = "kernel_only")]
    user_only: bool,

    /// Collect only kernel stacks.
    #[arg(long)]
    kernel_only: bool,

    #[command(flatten)]
    python: PythonArgs,

    #[command(flatten)]
    files: FileArgs,
}

impl SamplingArgs {
    /// Exactly one of `--pid`, `--all` and `-- COMMAND` (`command`);
    /// `--cgroup` alone stands for `--all` (in those cgroups).
    fn target(&self, command: &[OsString]) -> Result<Target, UsageError> {
        choose_target(&self.pid, self.all, &self.cgroup, command)
    }

    fn frequency(&self) -> Result<u64, UsageError> {
        match self.frequency {
            0 => Err(UsageError::new(
                "frequency must be at least 1 Hz; pass -F 99 for example",
            )),
            hz => Ok(hz),
        }
    }
}

#[derive(Debug, Args)]
struct RecordArgs {
    #[command(flatten)]
    sampling: SamplingArgs,

    /// Stop after SECS seconds, at most 365 days [default: until Ctrl-C, SIGTERM, or every
    /// target has exited].
    #[arg(short, long, value_name = "SECS")]
    duration: Option<f64>,

    /// Append a report of what was sampled every SECS seconds, at most 365 days [default: one
    /// report at the end]. A file named with -o appears (renamed into place) at the end of the run.
    #[arg(short, long, value_name = "SECS", env = "TRIPOD_INTERVAL")]
    interval: Option<f64>,

    /// Write to PATH (`-` for stdout) [default: a new tripod_XXXXXX.log in $TMPDIR].
    #[arg(short, long, value_name = "PATH", env = "TRIPOD_OUTPUT")]
    output: Option<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = FormatArg::Log)]
    format: FormatArg,

    /// What each folded line (-f folded) starts with: `process` (the process name, as
    /// always), `container` (the container, else the cgroup, then the process name) or
    /// `cgroup` (the cgroup path, then the process name).
    #[arg(long, value_enum, default_value_t = FoldedPrefixArg::Process)]
    folded_prefix: FoldedPrefixArg,

    /// With --mode off-cpu: ignore waits shorter than this many microseconds.
    #[arg(long, value_name = "US", default_value_t = DEFAULT_MIN_BLOCK_US)]
    min_block_us: u32,

    /// Annotation rules (TOML) tried before the built-in ones; see README.md.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,

    /// Keep each thread's stacks apart instead of merging them per process.
    #[arg(long)]
    per_thread: bool,

    /// Also sample the idle task (pid 0) when sampling everything.
    #[arg(long)]
    include_idle: bool,

    /// Distinct stacks the kernel can hold between two drains (each of two maps; 127 frames
    /// of 8 bytes per entry; at most 1048576). Raise it when the summary reports stacks that
    /// were not stored.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_STACK_STORAGE_SIZE)]
    stack_storage_size: u32,

    /// Distinct (thread, stack) pairs the kernel can count between two drains (each of two
    /// maps; at most 4194304). Raise it when the summary reports samples lost to a full count
    /// map.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_COUNT_MAP_SIZE)]
    count_map_size: u32,

    /// Kernel memory for the compiled unwind rows of `--unwind tables` (K, M, G suffixes; 16
    /// bytes a row). Files that do not fit are unwound by copying; the summary says so.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_file_size)]
    unwind_table_size: u64,

    /// Bytes of user stack copied per sample for dwarf unwinding (at most 32768). Deeper
    /// stacks end in [truncated].
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_STACK_COPY)]
    stack_copy_bytes: u32,

    /// Size of the ring buffer that carries stack copies, in bytes (rounded up to a power of
    /// two; at most 268435456, 256 MiB). Raise it when the summary reports samples dropped
    /// because it was full.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BUFFER_SIZE)]
    ring_buffer_size: u32,

    /// Send each interval's profile to a Pyroscope server (or anything speaking its
    /// `POST /ingest` API) at URL, e.g. http://pyroscope:4040. Reports every 10 s unless -i
    /// says otherwise; without -o nothing is written locally.
    #[arg(
        long,
        value_name = "URL",
        env = "TRIPOD_PUSH",
        help_heading = "Pushing to Pyroscope"
    )]
    push: Option<String>,

    /// What --push sends: `pprof` (one request per interval, labels per sample) or `folded`
    /// (one request per process).
    #[arg(long, value_enum, default_value_t = PushFormatArg::Pprof, requires = "push", help_heading = "Pushing to Pyroscope")]
    push_format: PushFormatArg,

    /// The application name profiles are stored under.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "tripod-bpf",
        requires = "push",
        help_heading = "Pushing to Pyroscope"
    )]
    push_name: String,

    /// A label for every pushed profile, besides host, pid, process (and thread); repeat it.
    #[arg(
        long,
        value_name = "KEY=VALUE",
        requires = "push",
        help_heading = "Pushing to Pyroscope"
    )]
    push_label: Vec<String>,

    /// An HTTP header for every push request, e.g. "X-Scope-OrgID: team-a"; repeat it.
    #[arg(
        long,
        value_name = "NAME: VALUE",
        requires = "push",
        help_heading = "Pushing to Pyroscope"
    )]
    push_header: Vec<String>,

    /// No status line and no progress messages on stderr; warnings and errors still show.
    #[arg(short, long)]
    quiet: bool,

    /// For `cargo xtask bench --only sideband` only: where the records of mappings come
    /// from (the perf events, the eBPF probe, none), and a closing line measuring them.
    #[arg(long, value_enum, hide = true)]
    sideband_source: Option<SidebandSourceArg>,

    /// Start COMMAND, sample it until it exits, and exit with its status.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SidebandSourceArg {
    Perf,
    Ebpf,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum UnwindArg {
    Dwarf,
    Fp,
    Tables,
    Auto,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Cpu,
    OffCpu,
    Wall,
}

impl From<UnwindArg> for UnwindMode {
    fn from(arg: UnwindArg) -> UnwindMode {
        match arg {
            UnwindArg::Dwarf => UnwindMode::Dwarf,
            UnwindArg::Fp => UnwindMode::FramePointers,
            UnwindArg::Tables => UnwindMode::Tables,
            UnwindArg::Auto => UnwindMode::Auto,
        }
    }
}

impl From<ModeArg> for Mode {
    fn from(arg: ModeArg) -> Mode {
        match arg {
            ModeArg::Cpu => Mode::Cpu,
            ModeArg::OffCpu => Mode::OffCpu,
            ModeArg::Wall => Mode::Wall,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FoldedPrefixArg {
    Process,
    Container,
    Cgroup,
}

impl FoldedPrefixArg {
    fn prefix(self) -> FoldedPrefix {
        match self {
            FoldedPrefixArg::Process => FoldedPrefix::Process,
            FoldedPrefixArg::Container => FoldedPrefix::Container,
            FoldedPrefixArg::Cgroup => FoldedPrefix::Cgroup,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PushFormatArg {
    Pprof,
    Folded,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Log,
    Folded,
    Json,
    /// An interactive flame graph
    Svg,
    /// gzipped profile.proto, for go tool pprof, Pyroscope and Parca
    Pprof,
    /// speedscope's JSON file format, one profile per thread
    Speedscope,
}

/// Why the arguments gave no [`Command`].
#[derive(Debug)]
pub enum ParseError {
    /// For clap to print and exit with: help, version, or a syntax error.
    Clap(clap::Error),
    /// A combination clap accepted but tripod-bpf does not (exit status 2).
    Usage(UsageError),
}

impl From<clap::Error> for ParseError {
    fn from(error: clap::Error) -> Self {
        ParseError::Clap(error)
    }
}

impl From<UsageError> for ParseError {
    fn from(error: UsageError) -> Self {
        ParseError::Usage(error)
    }
}

/// Parses a full argument list (including the program name).
pub fn parse_args<I, T>(args: I) -> Result<Command, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    Ok(match cli.subcommand {
        Some(Subcommands::Dump(dump)) => dump.into_command()?,
        Some(Subcommands::Report(report)) => Command::Report(report.into_config()),
        Some(Subcommands::Top(top)) => Command::Top(top.into_config()?),
        Some(Subcommands::Completions { shell }) => Command::Print(completion_script(shell)),
        Some(Subcommands::Man) => Command::Print(man_page()?),
        None => Command::Record(cli.record.into_config()?),
    })
}

fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tripod-bpf", &mut script);
    script
}

fn man_page() -> Result<Vec<u8>, UsageError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| UsageError::new(format!("rendering the man page: {e}")))?;
    Ok(page)
}

impl FormatArg {
    fn format(self) -> OutputFormat {
        match self {
            FormatArg::Log => OutputFormat::Log,
            FormatArg::Folded => OutputFormat::Folded,
            FormatArg::Json => OutputFormat::Json,
            FormatArg::Svg => OutputFormat::Svg,
            FormatArg::Pprof => OutputFormat::Pprof,
            FormatArg::Speedscope => OutputFormat::Speedscope,
        }
    }
}

fn stack_selection(user_only: bool, kernel_only: bool) -> StackSelection {
    match (user_only, kernel_only) {
        (true, _) => StackSelection::UserOnly,
        (_, true) => StackSelection::KernelOnly,
        _ => StackSelection::Both,
    }
}

/// Seconds from the command line as a `Duration`: positive, finite and at most
/// [`MAX_SECONDS`] (a larger float does not even fit a `Duration`).
fn positive_seconds(value: Option<f64>, flag: &str) -> Result<Option<Duration>, UsageError> {
    match value {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_SECONDS => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        // 1e300 written out would be 300 digits.
        Some(s) if s.abs() >= 1e9 => Err(UsageError::new(format!(
            "{flag} must be a positive number of seconds up to {MAX_SECONDS} (365 days), \
             got {s:e}; pass a shorter time"
        ))),
        Some(s) => Err(UsageError::new(format!(
            "{flag} must be a positive number of seconds up to {MAX_SECONDS} (365 days), \
             got {s}; pass a shorter time"
        ))),
    }
}

/// A map size between 1 and `max`, checked here so the kernel never has to
/// refuse it with a bare errno.
fn map_size(value: u32, flag: &str, max: u32) -> Result<u32, UsageError> {
    if (1..=max).contains(&value) {
        return Ok(value);
    }
    Err(UsageError::new(format!(
        "{flag} must be between 1 and {max}, got {value}; pass a smaller size"
    )))
}

/// Exactly one of `--pid`, `--all` and `-- COMMAND`; `--cgroup` alone
/// stands for `--all` (in those cgroups).
fn choose_target(
    pids: &[u32],
    all: bool,
    cgroups: &[PathBuf],
    command: &[OsString],
) -> Result<Target, UsageError> {
    match (pids.is_empty(), all, command.is_empty()) {
        (false, false, true) => Ok(Target::Pids(pids.to_vec())),
        (true, true, true) => Ok(Target::All),
        (true, false, false) => Ok(Target::Command(command.to_vec())),
        (true, false, true) if !cgroups.is_empty() => Ok(Target::All),
        (true, false, true) => Err(UsageError::new(
            "no target given; pass --pid PID, --all, --cgroup PATH, or -- COMMAND [ARGS...]",
        )),
        _ => Err(UsageError::new(
            "choose one target: --pid, --all and -- COMMAND cannot be combined",
        )),
    }
}

fn output_dest(path: Option<PathBuf>, default: OutputDest) -> OutputDest {
    match path {
        None => default,
        Some(path) if path.as_os_str() == "-" => OutputDest::Stdout,
        Some(path) => OutputDest::File(path),
    }
}

/// `--input`: the kinds `report` reads.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum InputArg {
    Json,
    Gdb,
    #[value(name = "eu-stack")]
    EuStack,
    #[value(name = "py-spy")]
    PySpy,
    #[value(name = "py-spy-json")]
    PySpyJson,
    Traceback,
    Log,
}

impl InputArg {
    fn kind(self) -> InputKind {
        match self {
            InputArg::Json => InputKind::Json,
            InputArg::Gdb => InputKind::Gdb,
            InputArg::EuStack => InputKind::EuStack,
            InputArg::PySpy => InputKind::PySpy,
            InputArg::PySpyJson => InputKind::PySpyJson,
            InputArg::Traceback => InputKind::Traceback,
            InputArg::Log => InputKind::Log,
        }
    }
}

impl ReportArgs {
    fn into_config(self) -> ReportConfig {
        ReportConfig {
            inputs: self.inputs,
            kind: self.input.map(InputArg::kind),
            quiet: self.quiet,
            format: self.format.format(),
            folded_prefix: self.folded_prefix.prefix(),
            output: output_dest(self.output, OutputDest::Stdout),
            rules: self.rules,
        }
    }
}

impl DumpArgs {
    /// A dump of a process, or of a core file.
    fn into_command(self) -> Result<Command, UsageError> {
        let Some(core) = self.core else {
            if self.exe.is_some() || self.sysroot.is_some() {
                return Err(UsageError::new(
                    "--exe and --sysroot name a core file's files; pass the core with --core FILE",
                ));
            }
            return Ok(Command::Dump(self.into_config()?));
        };
        Ok(Command::DumpCore(CoreDumpConfig {
            core,
            exe: self.exe,
            sysroot: self.sysroot,
            format: if self.json {
                OutputFormat::Json
            } else {
                self.format.format()
            },
            output: output_dest(self.output, OutputDest::Stdout),
            rules: self.rules,
            max_file_size: self.files.max_file_size,
            python: self.python.frames(),
            locals: self.locals,
        }))
    }

    fn into_config(self) -> Result<DumpConfig, UsageError> {
        let pid = self.pid.expect("clap requires --pid without --core");
        if pid == 0 {
            return Err(UsageError::new(
                "pid 0 is the idle task, not a process; pass the pid of a running process",
            ));
        }
        if self.stack_copy_bytes == 0 || self.stack_copy_bytes > MAX_DUMP_STACK_COPY {
            return Err(UsageError::new(format!(
                "--stack-copy-bytes must be between 1 and {MAX_DUMP_STACK_COPY} for a dump, got {}",
                self.stack_copy_bytes
            )));
        }
        let every = positive_seconds(self.every, "--every")?;
        if every.is_some() && self.format.format().single_profile() {
            return Err(UsageError::new(format!(
                "a {} file holds one dump; drop --every, or use -f log, folded or json for a series",
                self.format.format().name()
            )));
        }
        let default_output = if every.is_some() {
            OutputDest::TempFile
        } else {
            OutputDest::Stdout
        };
        Ok(DumpConfig {
            pid,
            format: if self.json {
                OutputFormat::Json
            } else {
                self.format.format()
            },
            output: output_dest(self.output, default_output),
            every,
            rules: self.rules,
            stacks: stack_selection(self.user_only, self.kernel_only),
            stack_copy_bytes: self.stack_copy_bytes,
            python: self.python.frames(),
            locals: self.locals,
            max_file_size: self.files.max_file_size,
        })
    }
}

/// The sizes of what the kernel side allocates, each checked against its limit.
struct KernelSizes {
    stack_storage_size: u32,
    count_map_size: u32,
    stack_copy_bytes: u32,
    ring_buffer_size: u32,
    unwind_table_rows: u32,
}

impl RecordArgs {
    /// Checks the arguments in a fixed order (the first problem found is the
    /// one reported) and builds the recording's [`Config`].
    fn into_config(self) -> Result<Config, UsageError> {
        let push = self
            .push
            .as_deref()
            .map(|url| self.push_config(url))
            .transpose()?;
        let target = self.sampling.target(&self.command)?;
        let frequency = self.sampling.frequency()?;
        let duration = positive_seconds(self.duration, "--duration")?;
        let format = self.format.format();
        let (interval, output) = self.interval_and_output(format, push.is_some())?;
        let sizes = self.kernel_sizes()?;
        let mode = self.mode()?;
        Ok(Config {
            target,
            cgroups: self.sampling.cgroup,
            folded_prefix: self.folded_prefix.prefix(),
            mode,
            min_block_us: self.min_block_us,
            rules: self.rules,
            frequency,
            duration,
            interval,
            output,
            format,
            // speedscope shows one profile per thread.
            per_thread: self.per_thread || format == OutputFormat::Speedscope,
            stacks: stack_selection(self.sampling.user_only, self.sampling.kernel_only),
            include_idle: self.include_idle,
            stack_storage_size: sizes.stack_storage_size,
            count_map_size: sizes.count_map_size,
            unwind: self.sampling.unwind.into(),
            unwind_table_rows: sizes.unwind_table_rows,
            stack_copy_bytes: sizes.stack_copy_bytes,
            ring_buffer_size: sizes.ring_buffer_size,
            python: self.sampling.python.frames(),
            max_file_size: self.sampling.files.max_file_size,
            push,
            quiet: self.quiet,
            measure_sideband: self.sideband_source.map(|source| match source {
                SidebandSourceArg::Perf => SidebandSource::Perf,
                SidebandSourceArg::Ebpf => SidebandSource::Ebpf,
                SidebandSourceArg::None => SidebandSource::Off,
            }),
        })
    }

    /// When reports are written and where: `--push` reports every
    /// [`DEFAULT_PUSH_INTERVAL`] unless told otherwise, and writes nothing
    /// locally without `-o`; a format that holds one profile cannot take a
    /// series of them.
    fn interval_and_output(
        &self,
        format: OutputFormat,
        pushing: bool,
    ) -> Result<(Option<Duration>, OutputDest), UsageError> {
        let mut interval = positive_seconds(self.interval, "--interval (or TRIPOD_INTERVAL)")?;
        let output = match (pushing, &self.output) {
            (true, None) => OutputDest::Discard,
            (_, output) => output_dest(output.clone(), OutputDest::TempFile),
        };
        if pushing {
            interval = interval.or(Some(DEFAULT_PUSH_INTERVAL));
            if format.single_profile() && output != OutputDest::Discard {
                return Err(UsageError::new(format!(
                    "--push sends a profile every interval, and a {} file holds one; \
                     keep a local copy with -f log, folded or json",
                    format.name()
                )));
            }
        }
        if interval.is_some() && format.single_profile() && output != OutputDest::Discard {
            return Err(UsageError::new(format!(
                "a {} file holds one profile; drop --interval, or use -f json and `tripod-bpf report` each interval",
                format.name()
            )));
        }
        Ok((interval, output))
    }

    /// Map and buffer sizes within what the kernel accepts, so it never has
    /// to refuse one with a bare errno.
    fn kernel_sizes(&self) -> Result<KernelSizes, UsageError> {
        let stack_storage_size = map_size(
            self.stack_storage_size,
            "--stack-storage-size",
            MAX_STACK_STORAGE_SIZE,
        )?;
        let count_map_size = map_size(self.count_map_size, "--count-map-size", MAX_COUNT_MAP_SIZE)?;
        if self.stack_copy_bytes == 0 || self.stack_copy_bytes as usize > MAX_STACK_COPY {
            return Err(UsageError::new(format!(
                "--stack-copy-bytes must be between 1 and {MAX_STACK_COPY}, got {}",
                self.stack_copy_bytes
            )));
        }
        // The kernel wants a power of two of at least one page.
        let ring_buffer_size = map_size(
            self.ring_buffer_size,
            "--ring-buffer-size",
            MAX_RING_BUFFER_SIZE,
        )?
        .max(4096)
        .next_power_of_two();
        // 16-byte rows; the kernel caps an array's memory well below 4G rows.
        let rows = self.unwind_table_size / 16;
        if rows == 0 || rows > MAX_UNWIND_TABLE_ROWS {
            return Err(UsageError::new(format!(
                "--unwind-table-size must be between 16 bytes and {} MiB",
                MAX_UNWIND_TABLE_ROWS * 16 / (1024 * 1024)
            )));
        }
        Ok(KernelSizes {
            stack_storage_size,
            count_map_size,
            stack_copy_bytes: self.stack_copy_bytes,
            ring_buffer_size,
            unwind_table_rows: rows as u32,
        })
    }

    /// `--mode`, and `--min-block-us` only with the mode it applies to.
    fn mode(&self) -> Result<Mode, UsageError> {
        let mode = Mode::from(self.sampling.mode);
        if mode != Mode::OffCpu && self.min_block_us != DEFAULT_MIN_BLOCK_US {
            return Err(UsageError::new(
                "--min-block-us only applies to --mode off-cpu; add --mode off-cpu or drop it",
            ));
        }
        Ok(mode)
    }

    fn push_config(&self, url: &str) -> Result<PushConfig, UsageError> {
        check_push_url(url)?;
        let pair = |text: &str, separator: char, flag: &str, example: &str| match text
            .split_once(separator)
        {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.trim().to_string()))
            }
            _ => Err(UsageError::new(format!(
                "{flag} {text:?}: expected {example}"
            ))),
        };
        let labels = self
            .push_label
            .iter()
            .map(|l| pair(l, '=', "--push-label", "KEY=VALUE, e.g. env=staging"))
            .collect::<Result<_, _>>()?;
        let headers = self
            .push_header
            .iter()
            .map(|h| {
                pair(
                    h,
                    ':',
                    "--push-header",
                    "\"Name: value\", e.g. \"X-Scope-OrgID: team-a\"",
                )
                .and_then(|(name, value)| check_push_header(h, name, value))
            })
            .collect::<Result<_, _>>()?;
        Ok(PushConfig {
            url: url.to_string(),
            format: match self.push_format {
                PushFormatArg::Pprof => PushFormat::Pprof,
                PushFormatArg::Folded => PushFormat::Folded,
            },
            name: self.push_name.clone(),
            labels,
            headers,
        })
    }
}

/// `--push URL`: parsed as an http(s) URL with a host and a port that exists,
/// so a typo fails here instead of every push failing later. `/ingest` is
/// appended to it: a query or fragment would end up in the wrong place.
fn check_push_url(url: &str) -> Result<(), UsageError> {
    let refuse = |problem: &str| {
        UsageError::new(format!(
            "--push {url:?}: {problem}; pass a base URL such as http://localhost:4040"
        ))
    };
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refuse("the URL holds spaces or control characters"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(refuse("expected an http:// or https:// URL"));
    }
    let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
    if after_scheme.is_empty() || after_scheme.starts_with(['/', ':']) {
        return Err(refuse("no host"));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| refuse(&format!("not a URL ({e})")))?;
    let authority = uri.authority().ok_or_else(|| refuse("no host"))?;
    if authority.host().is_empty() {
        return Err(refuse("no host"));
    }
    // `Authority::port` hides a port that does not fit a u16: read it from the text.
    let host_and_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let port = host_and_port
        .rsplit_once(':')
        .filter(|(_, port)| !port.contains(']'))
        .map(|(_, port)| port);
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(refuse(&format!("port {port} is not between 1 and 65535")));
        }
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(refuse("a query or fragment cannot precede /ingest"));
    }
    Ok(())
}

/// `--push-header`: a name HTTP allows (a token) and a value without CR, LF
/// or NUL, which would split or cut the request.
fn check_push_header(
    text: &str,
    name: String,
    value: String,
) -> Result<(String, String), UsageError> {
    use ureq::http::{HeaderName, HeaderValue};
    if HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(UsageError::new(format!(
            "--push-header {text:?}: {name:?} is not an HTTP header name; use letters, digits and -"
        )));
    }
    if HeaderValue::from_str(&value).is_err() {
        return Err(UsageError::new(format!(
            "--push-header {text:?}: the value holds control characters (CR, LF or NUL); remove them"
        )));
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    /// Tests that parse hold this, so the one test that sets TRIPOD_* variables
    /// cannot change what the others see.
    static ENVIRONMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    impl ParseError {
        fn clap(self) -> clap::Error {
            match self {
                ParseError::Clap(error) => error,
                ParseError::Usage(usage) => panic!("expected a clap error, got {usage:?}"),
            }
        }

        fn usage(self) -> UsageError {
            match self {
                ParseError::Usage(usage) => usage,
                ParseError::Clap(error) => panic!("expected a usage error, got {error:?}"),
            }
        }
    }

    fn parse_command(line: &str) -> Result<Command, ParseError> {
        let _guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
        parse_args(line.split_whitespace())
    }

    fn parse(line: &str) -> Result<Config, ParseError> {
        parse_command(line).map(|command| match command {
            Command::Record(config) => config,
            other => panic!("{line}: expected a recording, got {other:?}"),
        })
    }

    fn config(line: &str) -> Config {
        parse(line).unwrap_or_else(|e| panic!("{line}: {e:?}"))
    }

    fn dump_config(line: &str) -> DumpConfig {
        match parse_command(line) {
            Ok(Command::Dump(config)) => config,
            other => panic!("{line}: expected a dump, got {other:?}"),
        }
    }

    fn usage_error_of(line: &str) -> String {
        match parse_command(line) {
            Err(ParseError::Usage(UsageError(message))) => message,
            other => panic!("{line}: expected a usage error, got {other:?}"),
        }
    }

    fn usage_error(line: &str) -> String {
        match parse(line) {
            Err(ParseError::Usage(UsageError(message))) => message,
            other => panic!("{line}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = config("tripod-bpf --all");
        assert_eq!(c, Config::new(Target::All));
        assert_eq!(c.frequency, 99);
    }

    #[test]
    fn the_bench_only_sideband_source_is_hidden_and_off_by_default() {
        assert_eq!(config("tripod-bpf --all").measure_sideband, None);
        assert_eq!(
            config("tripod-bpf --all --sideband-source ebpf").measure_sideband,
            Some(SidebandSource::Ebpf)
        );
        assert_eq!(
            config("tripod-bpf --all --sideband-source none").measure_sideband,
            Some(SidebandSource::Off)
        );
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--ring-buffer-size"), "{help}");
        assert!(!help.contains("sideband-source"), "{help}");
    }

    #[test]
    fn pids_from_commas_and_repeats() {
        let c = config("tripod-bpf -p 1,2 --pid 3");
        assert_eq!(c.target, Target::Pids(vec![1, 2, 3]));
    }

    #[test]
    fn short_and_long_forms_agree() {
        let short = config("tripod-bpf -p 7 -F 999 -d 2.5 -i 1 -o out.txt -f folded");
        let long = config(
            "tripod-bpf --pid 7 --frequency 999 --duration 2.5 --interval 1 --output out.txt --format folded",
        );
        assert_eq!(short, long);
        assert_eq!(short.frequency, 999);
        assert_eq!(short.duration, Some(Duration::from_millis(2500)));
        assert_eq!(short.interval, Some(Duration::from_secs(1)));
        assert_eq!(short.output, OutputDest::File("out.txt".into()));
        assert_eq!(short.format, OutputFormat::Folded);
    }

    #[test]
    fn command_after_double_dash() {
        let c = config("tripod-bpf -f json -- ./prog --flag x");
        assert_eq!(
            c.target,
            Target::Command(vec!["./prog".into(), "--flag".into(), "x".into()])
        );
    }

    #[test]
    fn dash_means_stdout() {
        assert_eq!(config("tripod-bpf -a -o -").output, OutputDest::Stdout);
    }

    #[test]
    fn stack_selection() {
        assert_eq!(
            config("tripod-bpf -a --user-only").stacks,
            StackSelection::UserOnly
        );
        assert_eq!(
            config("tripod-bpf -a --kernel-only").stacks,
            StackSelection::KernelOnly
        );
        let e = parse("tripod-bpf -a --user-only --kernel-only")
            .unwrap_err()
            .clap();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn unwinding_options() {
        assert_eq!(config("tripod-bpf -a").unwind, UnwindMode::Auto);
        assert_eq!(
            config("tripod-bpf -a --unwind fp").unwind,
            UnwindMode::FramePointers
        );
        assert_eq!(
            config("tripod-bpf -a --unwind dwarf").unwind,
            UnwindMode::Dwarf
        );
        assert_eq!(
            config("tripod-bpf -a --unwind tables").unwind,
            UnwindMode::Tables
        );
        assert_eq!(
            config("tripod-bpf -a").unwind_table_rows,
            32 * 1024 * 1024 / 16
        );
        assert_eq!(
            config("tripod-bpf -a --unwind-table-size 1M").unwind_table_rows,
            65536
        );
        assert!(usage_error("tripod-bpf -a --unwind-table-size 8")
            .contains("--unwind-table-size must be between 16 bytes"));
        assert!(usage_error("tripod-bpf -a --unwind-table-size 2G").contains("--unwind-table-size"));
        assert_eq!(
            config("tripod-bpf -a --stack-copy-bytes 8192").stack_copy_bytes,
            8192
        );
        assert!(
            usage_error("tripod-bpf -a --stack-copy-bytes 40000").contains("--stack-copy-bytes")
        );
        assert_eq!(
            config("tripod-bpf -a --ring-buffer-size 5000").ring_buffer_size,
            8192
        );
        assert_eq!(
            config("tripod-bpf -a --ring-buffer-size 1").ring_buffer_size,
            4096
        );
    }

    #[test]
    fn modes() {
        assert_eq!(config("tripod-bpf -a").mode, Mode::Cpu);
        let off = config("tripod-bpf -p 7 --mode off-cpu --min-block-us 50");
        assert_eq!(off.mode, Mode::OffCpu);
        assert_eq!(off.min_block_us, 50);
        assert_eq!(
            config("tripod-bpf -p 7 -m wall --per-thread").mode,
            Mode::Wall
        );
        assert!(usage_error("tripod-bpf -p 7 --min-block-us 50").contains("--mode off-cpu"));
        assert_eq!(
            config("tripod-bpf -a --rules r.toml").rules,
            Some(PathBuf::from("r.toml"))
        );
    }

    #[test]
    fn dump_of_a_core_file() {
        let line = "tripod-bpf dump --core c.1 --exe ./a --sysroot /r -f folded -o x";
        let Ok(Command::DumpCore(core)) = parse_command(line) else {
            panic!("{line}: expected a core dump");
        };
        assert_eq!(core.core, PathBuf::from("c.1"));
        assert_eq!(core.exe, Some(PathBuf::from("./a")));
        assert_eq!(core.sysroot, Some(PathBuf::from("/r")));
        assert_eq!(core.format, OutputFormat::Folded);
        assert_eq!(core.output, OutputDest::File("x".into()));
        let Ok(Command::DumpCore(json)) = parse_command("tripod-bpf dump --core c.1 --json") else {
            panic!("expected a core dump");
        };
        assert_eq!((json.format, json.exe), (OutputFormat::Json, None));
        assert_eq!((json.python, json.locals), (PythonFrames::Merged, false));
        // Python frames and their locals are read from the core.
        let Ok(Command::DumpCore(python)) =
            parse_command("tripod-bpf dump --core c.1 --locals --all-native-frames")
        else {
            panic!("expected a core dump");
        };
        assert_eq!(
            (python.python, python.locals),
            (PythonFrames::MergedAll, true)
        );
        // A core is no process: nothing to watch, no live-only choices.
        for line in [
            "tripod-bpf dump --core c.1 -p 42",
            "tripod-bpf dump --core c.1 --every 2",
            "tripod-bpf dump --core c.1 --kernel-only",
        ] {
            let e = parse_command(line).unwrap_err().clap();
            assert_eq!(e.kind(), ErrorKind::ArgumentConflict, "{line}");
        }
        for line in [
            "tripod-bpf dump -p 1 --exe ./a",
            "tripod-bpf dump -p 1 --sysroot /r",
        ] {
            assert!(usage_error_of(line).contains("--core FILE"), "{line}");
        }
    }

    #[test]
    fn dump_subcommand() {
        let one = dump_config("tripod-bpf dump --pid 42");
        assert_eq!(one.pid, 42);
        assert_eq!(one.format, OutputFormat::Log);
        assert_eq!(one.output, OutputDest::Stdout);
        assert_eq!(one.every, None);
        let watch = dump_config("tripod-bpf dump -p 42 --json --every 2.5 --rules r.toml");
        assert_eq!(watch.format, OutputFormat::Json);
        assert_eq!(watch.every, Some(Duration::from_millis(2500)));
        assert_eq!(watch.output, OutputDest::TempFile);
        assert_eq!(watch.rules, Some(PathBuf::from("r.toml")));
        assert_eq!(
            dump_config("tripod-bpf dump -p 42 -f folded -o x").output,
            OutputDest::File("x".into())
        );
        assert!(usage_error_of("tripod-bpf dump -p 42 --every 0").contains("--every"));
        assert!(usage_error_of("tripod-bpf dump -p 0").contains("idle task"));
        assert!(
            usage_error_of("tripod-bpf dump -p 1 --stack-copy-bytes 30000")
                .contains("--stack-copy-bytes")
        );
        let e = parse_command("tripod-bpf dump").unwrap_err().clap();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = parse_command("tripod-bpf dump -p 1 --json -f folded")
            .unwrap_err()
            .clap();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        // A command named like a subcommand still runs after `--`.
        assert_eq!(
            config("tripod-bpf -- dump").target,
            Target::Command(vec!["dump".into()])
        );
    }

    #[test]
    fn cgroups_and_folded_prefixes() {
        let alone = config("tripod-bpf --cgroup /system.slice --cgroup /sys/fs/cgroup/user.slice");
        assert_eq!(alone.target, Target::All);
        assert_eq!(
            alone.cgroups,
            [
                PathBuf::from("/system.slice"),
                PathBuf::from("/sys/fs/cgroup/user.slice")
            ]
        );
        assert_eq!(alone.folded_prefix, FoldedPrefix::Process);
        let with_pid = config("tripod-bpf -p 7 --cgroup /x -f folded --folded-prefix container");
        assert_eq!(with_pid.target, Target::Pids(vec![7]));
        assert_eq!(with_pid.folded_prefix, FoldedPrefix::Container);
        assert!(config("tripod-bpf -a").cgroups.is_empty());
        match parse_command("tripod-bpf report r.json -f folded --folded-prefix cgroup") {
            Ok(Command::Report(report)) => assert_eq!(report.folded_prefix, FoldedPrefix::Cgroup),
            other => panic!("{other:?}"),
        }
        let e = parse("tripod-bpf -a --folded-prefix pod")
            .unwrap_err()
            .clap();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn target_errors() {
        assert!(usage_error("tripod-bpf").contains("--pid PID, --all"));
        assert!(usage_error("tripod-bpf -p 1 --all").contains("cannot be combined"));
        assert!(usage_error("tripod-bpf --all -- ls").contains("cannot be combined"));
    }

    #[test]
    fn value_errors() {
        assert!(usage_error("tripod-bpf -a -F 0").contains("frequency"));
        assert!(usage_error("tripod-bpf -a -d 0").contains("--duration"));
        assert!(usage_error("tripod-bpf -a -i -1").contains("--interval"));
        assert!(
            usage_error("tripod-bpf -a --stack-storage-size 0").contains("--stack-storage-size")
        );
        // Too large for a Duration, or for the kernel: refused here, naming the flag.
        for (line, flag) in [
            ("tripod-bpf -a -d 1e20", "--duration"),
            ("tripod-bpf -a -d 31536001", "--duration"),
            ("tripod-bpf -a -i 1e300", "--interval"),
            ("tripod-bpf -a -d NaN", "--duration"),
            ("tripod-bpf -a -d inf", "--duration"),
            (
                "tripod-bpf -a --stack-storage-size 4294967295",
                "--stack-storage-size",
            ),
            (
                "tripod-bpf -a --stack-storage-size 1048577",
                "--stack-storage-size",
            ),
            ("tripod-bpf -a --count-map-size 4194305", "--count-map-size"),
            (
                "tripod-bpf -a --ring-buffer-size 268435457",
                "--ring-buffer-size",
            ),
            ("tripod-bpf -a --ring-buffer-size 0", "--ring-buffer-size"),
        ] {
            let message = usage_error(line);
            assert!(message.contains(flag), "{line}: {message}");
        }
        assert!(usage_error_of("tripod-bpf dump -p 1 --every 1e300").contains("--every"));
        let longest = config("tripod-bpf -a -d 31536000 --stack-storage-size 1048576");
        assert_eq!(longest.duration, Some(Duration::from_secs(31_536_000)));
        assert_eq!(longest.stack_storage_size, MAX_STACK_STORAGE_SIZE);
        assert_eq!(
            config("tripod-bpf -a --ring-buffer-size 268435456").ring_buffer_size,
            MAX_RING_BUFFER_SIZE
        );
        let e = parse("tripod-bpf -a -f bogus").unwrap_err().clap();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        let e = parse("tripod-bpf -p abc").unwrap_err().clap();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn top_subcommand() {
        let Ok(Command::Top(top)) = parse_command("tripod-bpf top -p 42 -F 499 --delay 2") else {
            panic!("not a top command");
        };
        assert_eq!(top.record.target, Target::Pids(vec![42]));
        assert_eq!(top.record.frequency, 499);
        assert_eq!(
            (top.delay, top.window),
            (Duration::from_secs(2), Duration::from_secs(2))
        );
        assert!(top.record.per_thread, "the view filters by thread");
        assert_eq!(top.record.output, OutputDest::Discard);
        let Ok(Command::Top(top)) = parse_command("tripod-bpf top --all --window 5 --python-only")
        else {
            panic!("not a top command");
        };
        assert_eq!(top.window, Duration::from_secs(5));
        assert_eq!(top.record.python, PythonFrames::Only);
        assert!(usage_error("tripod-bpf top --all --delay 2 --window 1").contains("--window"));
        assert!(usage_error("tripod-bpf top --all --delay 0").contains("--delay"));
        assert!(usage_error("tripod-bpf top").contains("no target"));
        assert!(usage_error("tripod-bpf top -p 1 --all").contains("choose one target"));
    }

    /// `top` takes the sampling options of a recording, parsed the same way.
    #[test]
    fn top_and_record_share_their_sampling_options() {
        let shared = [
            "-p 42 -F 499 --mode wall --unwind tables --user-only --python-only",
            "-a --mode off-cpu --unwind fp --kernel-only --no-python --max-file-size 2M",
            "--cgroup /sys/fs/cgroup/unified --unwind dwarf --all-native-frames",
            "-- /bin/true",
        ];
        for options in shared {
            let record = config(&format!("tripod-bpf {options}"));
            let Ok(Command::Top(top)) = parse_command(&format!("tripod-bpf top {options}")) else {
                panic!("{options}: not a top command");
            };
            let top = top.record;
            assert_eq!(
                (
                    &top.target,
                    &top.cgroups,
                    top.frequency,
                    top.mode,
                    top.unwind
                ),
                (
                    &record.target,
                    &record.cgroups,
                    record.frequency,
                    record.mode,
                    record.unwind
                ),
                "{options}"
            );
            assert_eq!(
                (top.stacks, top.python, top.max_file_size),
                (record.stacks, record.python, record.max_file_size),
                "{options}"
            );
        }
        for conflict in ["--user-only --kernel-only", "--python-only --kernel-only"] {
            let line = format!("tripod-bpf top -a {conflict}");
            let e = parse_command(&line).unwrap_err().clap();
            assert_eq!(e.kind(), ErrorKind::ArgumentConflict, "{line}");
        }
        assert!(usage_error("tripod-bpf top -a -F 0").contains("at least 1 Hz"));
    }

    #[test]
    fn top_help_lists_every_unwind_mode() {
        let mut command = Cli::command();
        let top = command.find_subcommand_mut("top").unwrap();
        let help = top.render_long_help().to_string();
        for mode in ["`dwarf`", "`fp`", "`tables`", "`auto`"] {
            assert!(
                help.contains(mode),
                "{mode} missing from top --help:\n{help}"
            );
        }
    }

    #[test]
    fn completions_cover_every_subcommand_and_flag() {
        for shell in ["bash", "zsh", "fish"] {
            let line = format!("tripod-bpf completions {shell}");
            let script = match parse_command(&line) {
                Ok(Command::Print(script)) => String::from_utf8(script).unwrap(),
                other => panic!("{line}: {other:?}"),
            };
            for word in [
                "dump",
                "top",
                "window",
                "python-only",
                "locals",
                "mode",
                "svg",
            ] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
        let e = parse_args("tripod-bpf completions tcsh".split_whitespace())
            .unwrap_err()
            .clap();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn svg_is_one_graph() {
        assert_eq!(config("tripod-bpf -a -f svg").format, OutputFormat::Svg);
        assert!(usage_error("tripod-bpf -a -f svg -i 5").contains("--interval"));
        assert_eq!(
            dump_config("tripod-bpf dump -p 42 -f svg").format,
            OutputFormat::Svg
        );
        assert!(usage_error_of("tripod-bpf dump -p 42 -f svg --every 2").contains("--every"));
    }

    #[test]
    fn one_profile_formats() {
        let pprof = config("tripod-bpf -a -f pprof");
        assert_eq!(pprof.format, OutputFormat::Pprof);
        assert!(!pprof.per_thread);
        // speedscope shows one profile per thread.
        assert!(config("tripod-bpf -a -f speedscope").per_thread);
        assert!(usage_error("tripod-bpf -a -f pprof -i 5").contains("a pprof file holds one"));
        assert!(
            usage_error_of("tripod-bpf dump -p 42 -f speedscope --every 2")
                .contains("a speedscope file holds one dump")
        );
    }

    #[test]
    fn push_flags() {
        let c = config(
            "tripod-bpf -a --push http://pyro:4040 --push-format folded --push-name shop \
             --push-label env=prod --push-label region=eu --push-header X-Scope-OrgID:team-a -q",
        );
        let push = c.push.expect("push configured");
        assert_eq!(push.url, "http://pyro:4040");
        assert_eq!(push.format, PushFormat::Folded);
        assert_eq!(push.name, "shop");
        assert_eq!(
            push.labels,
            [
                ("env".into(), "prod".into()),
                ("region".into(), "eu".into())
            ]
        );
        assert_eq!(push.headers, [("X-Scope-OrgID".into(), "team-a".into())]);
        assert!(c.quiet);
        // Every 10 s unless -i says otherwise; nothing written locally without -o.
        assert_eq!(c.interval, Some(DEFAULT_PUSH_INTERVAL));
        assert_eq!(c.output, OutputDest::Discard);
        let with_copy = config("tripod-bpf -a --push http://p -i 2 -o run.log");
        assert_eq!(with_copy.interval, Some(Duration::from_secs(2)));
        assert_eq!(with_copy.output, OutputDest::File("run.log".into()));
        assert_eq!(with_copy.push.unwrap().format, PushFormat::Pprof);
        // Pushing alone may name a one-profile format: nothing is written locally.
        assert!(config("tripod-bpf -a --push http://p -f pprof")
            .push
            .is_some());

        assert!(usage_error("tripod-bpf -a --push pyro:4040").contains("http://"));
        for (url, problem) in [
            ("http://", "no host"),
            ("http://p:99999", "port 99999"),
            ("http://p:0", "port 0"),
            ("http://[::1]:70000", "port 70000"),
            ("http://p:4040\n", "control characters"),
            ("http://p:4040?org=a", "query"),
            ("http://p:4040#x", "fragment"),
        ] {
            let message = parse_args(["tripod-bpf", "-a", "--push", url])
                .map(|_| String::new())
                .unwrap_or_else(|e| e.usage().0);
            assert!(message.contains(problem), "{url:?}: {message:?}");
            assert!(!message.contains('\n'), "{url:?}: {message:?}");
        }
        for header in ["X-Org: a\r\nEvil: 1", "X Org: a", "X-Org: a\0b"] {
            let message = parse_args([
                "tripod-bpf",
                "-a",
                "--push",
                "http://p",
                "--push-header",
                header,
            ])
            .map(|_| String::new())
            .unwrap_or_else(|e| e.usage().0);
            assert!(message.contains("--push-header"), "{header:?}: {message:?}");
        }
        assert!(
            config("tripod-bpf -a --push https://user@p.example:443/base/")
                .push
                .is_some()
        );
        assert!(
            usage_error("tripod-bpf -a --push http://p --push-label env").contains("KEY=VALUE")
        );
        assert!(
            usage_error("tripod-bpf -a --push http://p --push-header X").contains("Name: value")
        );
        assert!(usage_error("tripod-bpf -a --push http://p -f svg -o x.svg").contains("--push"));
        let e = parse("tripod-bpf -a --push-label env=prod")
            .unwrap_err()
            .clap();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn report_subcommand() {
        let report = match parse_command(
            "tripod-bpf report run.json -f pprof -o run.pb.gz --rules r.toml",
        ) {
            Ok(Command::Report(report)) => report,
            other => panic!("{other:?}"),
        };
        assert_eq!(report.inputs, [PathBuf::from("run.json")]);
        assert_eq!(report.format, OutputFormat::Pprof);
        assert_eq!(report.output, OutputDest::File("run.pb.gz".into()));
        assert_eq!(report.rules, Some(PathBuf::from("r.toml")));
        match parse_command("tripod-bpf report -") {
            Ok(Command::Report(r)) => {
                assert_eq!(r.output, OutputDest::Stdout);
                assert_eq!(r.format, OutputFormat::Log);
            }
            other => panic!("{other:?}"),
        }
        let e = parse_command("tripod-bpf report").unwrap_err().clap();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn man_page_names_every_subcommand() {
        let page = match parse_command("tripod-bpf man") {
            Ok(Command::Print(page)) => String::from_utf8(page).unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(
            page.starts_with(".ie") || page.contains(".TH tripod-bpf 1"),
            "{page}"
        );
        for word in ["dump", "report", "completions", "push", "Examples"] {
            assert!(page.contains(word), "the man page does not mention {word}");
        }
    }

    #[test]
    fn python_flags() {
        assert_eq!(config("tripod-bpf -a").python, PythonFrames::Merged);
        assert_eq!(
            config("tripod-bpf -a --all-native-frames").python,
            PythonFrames::MergedAll
        );
        assert_eq!(
            config("tripod-bpf -a --python-only").python,
            PythonFrames::Only
        );
        assert_eq!(
            config("tripod-bpf -a --no-python").python,
            PythonFrames::Off
        );
        let dump = dump_config("tripod-bpf dump -p 42 --locals --python-only");
        assert!(dump.locals);
        assert_eq!(dump.python, PythonFrames::Only);
        assert!(!dump_config("tripod-bpf dump -p 42").locals);
        for line in [
            "tripod-bpf -a --python-only --no-python",
            "tripod-bpf -a --python-only --kernel-only",
            "tripod-bpf dump -p 42 --locals --no-python",
        ] {
            let e = parse_args(line.split_whitespace()).unwrap_err().clap();
            assert_eq!(e.kind(), ErrorKind::ArgumentConflict, "{line}");
        }
    }

    #[test]
    fn help_and_version_are_not_errors_of_ours() {
        assert_eq!(
            parse("tripod-bpf --help").unwrap_err().clap().kind(),
            ErrorKind::DisplayHelp
        );
        assert_eq!(
            parse("tripod-bpf --version").unwrap_err().clap().kind(),
            ErrorKind::DisplayVersion
        );
    }

    #[test]
    fn environment_sets_defaults_and_flags_win() {
        let guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
        let config = |line: &str| match parse_args(line.split_whitespace()).unwrap() {
            Command::Record(config) => config,
            other => panic!("{line}: {other:?}"),
        };
        std::env::set_var("TRIPOD_FREQUENCY", "49");
        std::env::set_var("TRIPOD_INTERVAL", "3");
        std::env::set_var("TRIPOD_OUTPUT", "/tmp/from-env.log");
        let from_env = config("tripod-bpf -a");
        let flags_win = config("tripod-bpf -a -F 7 -i 2 -o -");
        std::env::remove_var("TRIPOD_FREQUENCY");
        std::env::remove_var("TRIPOD_INTERVAL");
        std::env::remove_var("TRIPOD_OUTPUT");
        drop(guard);
        assert_eq!(from_env.frequency, 49);
        assert_eq!(from_env.interval, Some(Duration::from_secs(3)));
        assert_eq!(
            from_env.output,
            OutputDest::File("/tmp/from-env.log".into())
        );
        assert_eq!(flags_win.frequency, 7);
        assert_eq!(flags_win.interval, Some(Duration::from_secs(2)));
        assert_eq!(flags_win.output, OutputDest::Stdout);
    }
}
