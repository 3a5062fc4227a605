//! Where samples come from. [`SampleSource`] is what the rest of the
//! program consumes; two sources implement it:
//! - [`Sampler`], the live one: loads the eBPF program, attaches it to a
//!   perf event on every CPU, and drains what it counted. The only module
//!   that touches aya (here and in `btf`, `drain` and `source`).
//! - [`Replay`], records built by hand or read from a file: no kernel, no
//!   root, for tests.
//!
//! Both hand out records parsed by [`records`] from the kernel's bytes.
mod batch;
mod btf;
mod drain;
mod features;
pub mod probe;
pub mod records;
mod replay;
pub mod sideband;
mod source;
mod tables;
mod wakeup;

pub use drain::{count_drain_period, Flip, Settled};
pub use features::MissingFeature;
pub use records::{Record, Sample, UserStack, Wake};
pub use replay::{Replay, Told};
pub use source::{drain_counted, SampleSource};
pub use wakeup::{News, Wakeup};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        perf_event::{HardwareEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        BtfTracePoint, PerfEvent, TracePoint,
    },
    util::online_cpus,
    Btf, Ebpf, EbpfLoader,
};
use tripod_common::{
    names, PythonProcess, SampleCount, SampleKey, SamplerConfig, ScratchSlot, WalkedStack,
};

use crate::config::{SidebandSource, StackSelection};

/// What the sampler should watch and how much room its maps have.
#[derive(Clone, Debug)]
pub struct SamplerOptions {
    /// Samples per second on each CPU.
    pub frequency: u64,
    /// `None`: every process; `Some`: these tgids (more can be added later).
    pub targets: Option<Vec<u32>>,
    /// `--cgroup`: the cgroup ids whose subtrees are sampled, on top of
    /// `targets`; empty: no cgroup filter.
    pub cgroups: Vec<u64>,
    pub include_idle: bool,
    pub stacks: StackSelection,
    pub stack_storage_size: u32,
    pub count_map_size: u32,
    /// Copy user registers and stack for unwinding in userspace instead of
    /// walking frame pointers in the kernel.
    pub copy_user_stack: bool,
    /// Bytes of user stack copied per sample.
    pub stack_copy_bytes: u32,
    /// `--unwind tables`: walk user stacks in the kernel with compiled
    /// rows, at most this many (`copy_user_stack` must be set: the
    /// fallback); `None`: never.
    pub table_rows: Option<u32>,
    /// Size of the ring buffer carrying the copies (a power of two, in bytes).
    pub ring_buffer_size: u32,
    /// Sample threads on CPUs with the perf event (`cpu` and `wall` modes).
    pub sample_on_cpu: bool,
    /// Report target threads switching out and back in (`off-cpu` and `wall`).
    pub track_switches: bool,
    /// Python processes whose frames are collected from the first sample.
    pub python_processes: Vec<(u32, PythonProcess)>,
    /// Open the sideband ([`sideband`]): the kernel's records of mappings,
    /// execs, forks and exits, so that processes gone before their samples
    /// are drained are still located. Recordings only (a dump reads live
    /// threads, whose `/proc` is there).
    pub sideband: bool,
    /// `--sideband-source` (a measurement): which source, measured; `None`:
    /// the perf sideband, unmeasured.
    pub measure_sideband: Option<SidebandSource>,
}

impl SamplerOptions {
    /// Options that sample nothing until asked: for thread dumps.
    pub fn for_dump(pid: u32, stacks: StackSelection, stack_copy_bytes: u32) -> SamplerOptions {
        SamplerOptions {
            frequency: 1,
            targets: Some(vec![pid]),
            cgroups: Vec::new(),
            include_idle: false,
            stacks,
            stack_storage_size: 1,
            count_map_size: 1,
            copy_user_stack: true,
            stack_copy_bytes,
            table_rows: None,
            ring_buffer_size: 4096,
            sample_on_cpu: false,
            track_switches: false,
            python_processes: Vec::new(),
            sideband: false,
            measure_sideband: None,
        }
    }
}

/// The perf event that drives sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplingEvent {
    /// Hardware CPU cycles: no samples while a CPU idles.
    Cycles,
    /// The software cpu-clock timer, which works without a PMU (VMs).
    CpuClock,
}

impl SamplingEvent {
    pub fn name(self) -> &'static str {
        match self {
            SamplingEvent::Cycles => "cycles",
            SamplingEvent::CpuClock => "cpu-clock",
        }
    }
}

pub struct Sampler {
    /// Owns the programs and their links; dropping it detaches everything.
    ebpf: Ebpf,
    /// The kernel's BTF, which the iterator and tracepoint programs load against.
    btf: Option<Btf>,
    event: SamplingEvent,
    /// Set when hardware cycles were wanted but not available.
    fallback_reason: Option<String>,
    targets: HashMap<MapData, u32, u8>,
    control: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    counts: [HashMap<MapData, SampleKey, SampleCount>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    /// `--unwind tables`: the user stacks the counts of each generation name.
    walked: [HashMap<MapData, u32, WalkedStack>; 2],
    copies: RingBuf<MapData>,
    generation: u32,
    /// Whether the `perf_event` program writes the count maps (not when
    /// every sample's stack is copied to the ring buffer).
    counts_in_kernel: bool,
    /// How often the count maps must be drained ([`count_drain_period`]);
    /// `None` when the kernel counts nothing.
    count_drain: Option<std::time::Duration>,
    /// The kernel's count of samples lost to a full count map at the last
    /// drain: a change means stacks no count names may be left behind.
    count_map_full: u64,
    /// The kernel's count of samples sent whole for want of room in the
    /// stack map, at the last drain: a change means walked stacks no count
    /// names may be left behind.
    stack_map_sent: u64,
    /// The kernel's count of samples at the last flip: unchanged, the
    /// current generation holds nothing and needs no flip (nor the grace
    /// period after it, a wake-up of a thread of its own).
    samples_at_flip: Option<u64>,
    /// What `CONTROL_READER_TICKING` was last set to.
    reader_ticking: bool,
    /// The kernel's records of mappings, execs, forks and exits; `None`
    /// when not asked for or when the kernel refused it (then processes are
    /// located from `/proc` only, as without it).
    sideband: Option<sideband::Sideband>,
    /// `--unwind tables`: the rows loaded into the kernel.
    tables: Option<tables::TableStore>,
    /// `--sideband-source`: what the sideband delivered, measured.
    measured: Option<Measured>,
}

/// A sideband being measured (see [`probe`]).
struct Measured {
    source: SidebandSource,
    /// The eBPF probe, with `--sideband-source ebpf`.
    probe: Option<probe::Probe>,
    /// What the perf sideband handed over.
    perf: probe::SidebandTally,
}

impl Sampler {
    /// Loads the program, fills in the targets, and starts sampling on every CPU.
    pub fn start(options: &SamplerOptions) -> Result<Sampler> {
        raise_memlock_limit();
        let mut ebpf = load(options)?;
        let targets = fill_maps(&mut ebpf, options)?;
        let control = take_map(&mut ebpf, names::CONTROL)?;
        let counters = take_map(&mut ebpf, names::COUNTERS)?;
        let counts = [
            take_map(&mut ebpf, names::COUNTS[0])?,
            take_map(&mut ebpf, names::COUNTS[1])?,
        ];
        let stacks = [
            take_map(&mut ebpf, names::STACKS[0])?,
            take_map(&mut ebpf, names::STACKS[1])?,
        ];
        let walked = [
            take_map(&mut ebpf, names::WALKED[0])?,
            take_map(&mut ebpf, names::WALKED[1])?,
        ];
        let copies = take_map(&mut ebpf, names::STACK_COPIES)?;
        // Only a run that samples on CPUs needs it: its verification takes a
        // third of a second, most of a dump's start (`off-cpu` and dumps skip it).
        if options.sample_on_cpu {
            sample_program(&mut ebpf)?
                .load()
                .context("loading the sampling program (the verifier refused it)")?;
        }
        if options.sample_on_cpu && options.stacks.user() {
            attach_syscall_stacks(&mut ebpf);
        }
        let btf = match options.track_switches {
            true => Some(attach_switches(&mut ebpf)?),
            false => None,
        };
        // Before sampling: every sample then finds the records of mappings
        // made after this point.
        let measured = options.measure_sideband.map(|source| Measured {
            source,
            probe: None,
            perf: probe::SidebandTally::default(),
        });
        let perf_sideband = options.sideband
            && measured
                .as_ref()
                .is_none_or(|m| m.source == SidebandSource::Perf);
        let sideband = perf_sideband.then(open_sideband).flatten();
        let measured = match measured {
            Some(m) if m.source == SidebandSource::Ebpf => Some(Measured {
                probe: Some(attach_probe(&mut ebpf)?),
                ..m
            }),
            other => other,
        };
        // Sampling starts last, once everything it feeds is in place.
        let (event, fallback_reason) = match options.sample_on_cpu {
            true => attach_all_cpus(sample_program(&mut ebpf)?, options.frequency)?,
            false => (SamplingEvent::CpuClock, None),
        };
        // `--unwind tables` counts the stacks it walks on CPUs there too.
        let counts_in_kernel =
            options.sample_on_cpu && (!options.copy_user_stack || options.table_rows.is_some());
        let cpus = online_cpus().map_or(1, |cpus| cpus.len()) as u64;
        let count_drain = counts_in_kernel.then(|| {
            let rate = options.frequency.saturating_mul(cpus);
            count_drain_period(options.count_map_size, options.stack_storage_size, rate)
        });
        Ok(Sampler {
            ebpf,
            btf,
            event,
            fallback_reason,
            targets,
            control,
            counters,
            counts,
            stacks,
            walked,
            copies,
            generation: 0,
            counts_in_kernel,
            count_drain,
            count_map_full: 0,
            stack_map_sent: 0,
            samples_at_flip: None,
            reader_ticking: false,
            sideband,
            measured,
            tables: options.table_rows.map(tables::TableStore::new),
        })
    }
}

/// What `--unwind tables` needs and this kernel lacks; `None`: nothing.
/// Asked before [`Sampler::start`], so the run can fall back to copying.
pub fn missing_for_tables() -> Option<MissingFeature> {
    features::missing_for_tables(&features::kernel_facts())
}

/// The eBPF probe, loaded against the kernel's BTF.
fn attach_probe(ebpf: &mut Ebpf) -> Result<probe::Probe> {
    let kernel_btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    probe::Probe::attach(ebpf, &kernel_btf)
}

/// A measured run ends with a line on what its sideband delivered.
impl Drop for Sampler {
    fn drop(&mut self) {
        let Some(measured) = &self.measured else {
            return;
        };
        let (name, tally) = match (measured.source, &measured.probe) {
            (SidebandSource::Ebpf, Some(probe)) => ("ebpf", probe.tally()),
            (SidebandSource::Perf, _) => {
                let lost = self.sideband.as_ref().map_or(0, |s| s.counters().lost);
                (
                    "perf",
                    probe::SidebandTally {
                        lost,
                        ..measured.perf
                    },
                )
            }
            _ => ("none", probe::SidebandTally::default()),
        };
        crate::messages::note(&tally.describe(name));
    }
}

/// The sideband events, or `None` with a warning: without them a run still
/// works, as before them (short-lived processes stay unnamed).
fn open_sideband() -> Option<sideband::Sideband> {
    match sideband::Sideband::open(&sideband::SidebandOptions::default()) {
        Ok(sideband) => Some(sideband),
        Err(error) => {
            crate::messages::warn(&format!(
                "warning: {error:#}; short-lived processes may stay unnamed"
            ));
            None
        }
    }
}

/// Keeps each target thread's user stack as it enters `execve` or `exit`,
/// for its samples in there (see `tripod_common::syscall_stack`). Without
/// it, with a warning, those samples keep a `[truncated]` stack.
fn attach_syscall_stacks(ebpf: &mut Ebpf) {
    if let Err(error) = try_attach_syscall_stacks(ebpf) {
        crate::messages::warn(&format!(
            "warning: {error:#}; samples in execve and exit keep a truncated user stack"
        ));
    }
}

/// Where tracepoints are found: aya looks here (and under debugfs).
const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at [`TRACEFS`] when nothing is mounted there (a VM or a
/// container without systemd, which mounts it at boot), as perf does:
/// attaching to a tracepoint needs its id from there. A failure is left
/// to the attach, whose error names what is missing.
pub(crate) fn mount_tracefs_if_missing() {
    let mounted = std::fs::read_dir(format!("{TRACEFS}/events"))
        .is_ok_and(|mut entries| entries.next().is_some());
    if mounted {
        return;
    }
    let path = std::ffi::CString::new(TRACEFS).expect("no NUL in a constant");
    let kind = c"tracefs";
    // SAFETY: NUL-terminated strings that outlive the call, and no data.
    let done = unsafe {
        libc::mount(
            kind.as_ptr(),
            path.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    match done {
        0 => log::debug!("mounted tracefs at {TRACEFS}"),
        _ => log::debug!(
            "mounting tracefs at {TRACEFS}: {}",
            std::io::Error::last_os_error()
        ),
    }
}

fn try_attach_syscall_stacks(ebpf: &mut Ebpf) -> Result<()> {
    use tripod_common::syscall_stack::{names::SYSCALL_STACK_PROGRAM, SYSCALL_TRACEPOINTS};
    mount_tracefs_if_missing();
    let program: &mut TracePoint = ebpf
        .program_mut(SYSCALL_STACK_PROGRAM)
        .context("the eBPF object has no execve/exit program")?
        .try_into()?;
    program
        .load()
        .context("loading the execve/exit program (the verifier refused it)")?;
    for tracepoint in SYSCALL_TRACEPOINTS {
        program
            .attach("syscalls", tracepoint)
            .with_context(|| format!("attaching to syscalls:{tracepoint}"))?;
    }
    Ok(())
}

/// The eBPF object, configured and sized for `options`, loaded into the
/// kernel (its programs are loaded one by one later).
fn load(options: &SamplerOptions) -> Result<Ebpf> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(path, error)| anyhow::anyhow!("reading {path}: {error}"))? as u32;
    let config = SamplerConfig {
        all_processes: options.targets.is_none().into(),
        include_idle: options.include_idle.into(),
        self_tgid: std::process::id(),
        collect_user: options.stacks.user().into(),
        collect_kernel: options.stacks.kernel().into(),
        copy_user_stack: options.copy_user_stack.into(),
        stack_copy_bytes: options.stack_copy_bytes,
        track_switches: options.track_switches.into(),
        possible_cpus: cpus,
        cgroup_filter: (!options.cgroups.is_empty()).into(),
        task_offsets: btf::task_offsets()?,
        walk_tables: options.table_rows.is_some().into(),
        unwind_rows: options.table_rows.unwrap_or(1),
    };
    let probe_offsets = match options.measure_sideband {
        Some(SidebandSource::Ebpf) => Some(probe::file_offsets()?),
        _ => None,
    };
    let mut loader = EbpfLoader::new();
    loader.override_global(names::CONFIG, &config, true);
    for generation in 0..2 {
        loader.map_max_entries(names::STACKS[generation], options.stack_storage_size);
        loader.map_max_entries(names::COUNTS[generation], options.count_map_size);
        // As many walked stacks as frame-pointer ones; not preallocated,
        // and a single entry when nothing walks.
        let walked = options.table_rows.map_or(1, |_| options.stack_storage_size);
        loader.map_max_entries(names::WALKED[generation], walked);
    }
    // For a ring buffer, max_entries is its size in bytes.
    loader.map_max_entries(names::STACK_COPIES, options.ring_buffer_size);
    loader.map_max_entries(names::SCRATCH, ScratchSlot::len(cpus));
    if let Some(offsets) = &probe_offsets {
        probe::configure(&mut loader, offsets, cpus);
    }
    loader.map_max_entries(names::UNWIND_ROWS, options.table_rows.unwrap_or(1));
    loader.map_max_entries(names::UNWIND_PROCESSES, tables::process_slots());
    // The object is embedded so the binary runs on its own, from any directory.
    loader
        .load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/tripod"
        )))
        .context("loading the eBPF program into the kernel")
}

/// Writes the targets, the selected cgroups and the Python processes known
/// at the start into their maps; returns the targets map, which grows during the run.
fn fill_maps(ebpf: &mut Ebpf, options: &SamplerOptions) -> Result<HashMap<MapData, u32, u8>> {
    let mut targets: HashMap<MapData, u32, u8> = take_map(ebpf, names::TARGETS)?;
    for &pid in options.targets.iter().flatten() {
        targets
            .insert(pid, 1, 0)
            .with_context(|| format!("adding pid {pid} to the targets"))?;
    }
    let mut cgroups: HashMap<&mut MapData, u64, u8> = HashMap::try_from(
        ebpf.map_mut(names::CGROUPS)
            .context("the eBPF object has no map CGROUPS")?,
    )?;
    for &id in &options.cgroups {
        cgroups
            .insert(id, 1, 0)
            .with_context(|| format!("adding cgroup id {id} to the selected cgroups"))?;
    }
    let mut python: HashMap<&mut MapData, u32, PythonProcess> = HashMap::try_from(
        ebpf.map_mut(names::PYTHON_PROCESSES)
            .context("the eBPF object has no map PYTHON_PROCESSES")?,
    )?;
    for (pid, process) in &options.python_processes {
        python
            .insert(pid, process, 0)
            .with_context(|| format!("adding Python process {pid}"))?;
    }
    Ok(targets)
}

fn sample_program(ebpf: &mut Ebpf) -> Result<&mut PerfEvent> {
    Ok(ebpf
        .program_mut(names::SAMPLE_PROGRAM)
        .context("the eBPF object has no sampling program")?
        .try_into()?)
}

/// Loads and attaches the `sched_switch` program (`off-cpu` and `wall`);
/// returns the kernel's BTF it was loaded against, which dumps reuse.
fn attach_switches(ebpf: &mut Ebpf) -> Result<Btf> {
    let kernel_btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(names::SWITCH_PROGRAM)
        .context("the eBPF object has no sched_switch program")?
        .try_into()?;
    program
        .load("sched_switch", &kernel_btf)
        .context("loading the sched_switch program (the verifier refused it)")?;
    program
        .attach()
        .context("attaching to the sched_switch tracepoint")?;
    Ok(kernel_btf)
}

/// Attaches `program` on every online CPU: hardware cycles when the machine
/// has a PMU, else the software cpu-clock, saying why.
fn attach_all_cpus(
    program: &mut PerfEvent,
    frequency: u64,
) -> Result<(SamplingEvent, Option<String>)> {
    let cpus = online_cpus().map_err(|(path, error)| anyhow::anyhow!("reading {path}: {error}"))?;
    let policy = SamplePolicy::Frequency(frequency);
    let attach = |program: &mut PerfEvent, event: SamplingEvent, cpu: u32| {
        let config = match event {
            SamplingEvent::Cycles => PerfEventConfig::Hardware(HardwareEvent::CpuCycles),
            SamplingEvent::CpuClock => PerfEventConfig::Software(SoftwareEvent::CpuClock),
        };
        program.attach(
            config,
            PerfEventScope::AllProcessesOneCpu { cpu },
            policy,
            false,
        )
    };
    let first = *cpus.first().context("no online CPUs")?;
    let (event, fallback) = match attach(program, SamplingEvent::Cycles, first) {
        Ok(_) => (SamplingEvent::Cycles, None),
        Err(error) => {
            let reason = format!("{:#}", anyhow::Error::from(error));
            attach(program, SamplingEvent::CpuClock, first)
                .with_context(|| format!("opening the cpu-clock perf event on CPU {first}"))?;
            (SamplingEvent::CpuClock, Some(reason))
        }
    };
    for &cpu in &cpus[1..] {
        attach(program, event, cpu)
            .with_context(|| format!("opening the {} perf event on CPU {cpu}", event.name()))?;
    }
    Ok((event, fallback))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
/// See <https://lwn.net/Articles/837122/>.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
