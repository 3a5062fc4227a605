//! Root-only check and measurements of the sideband records (issue 16).
//!
//! ```sh
//! cargo build --release -p tripod-user --example sideband_check
//! sudo target/release/examples/sideband_check                 # 50 runs of /bin/true, checked
//! sudo target/release/examples/sideband_check --runs 50 --show # and the first run's records
//! sudo target/release/examples/sideband_check --shell-loop 1000
//! sudo target/release/examples/sideband_check --rate 100 --seconds 10
//! sudo target/release/examples/sideband_check --mmap-cost 200000
//! sudo target/release/examples/sideband_check --runs 200 --pages 1   # losses
//! ```
//!
//! - Default: opens the sideband events for every process (as `--all`
//!   would), starts `/bin/true` RUNS times, drains, and checks that each of
//!   those pids got an exec COMM, MMAP2 records for the program, the dynamic
//!   loader and libc, and an EXIT; then that a [`MappingHistory`] fed with
//!   the records locates an address of `/usr/bin/true` in each of them at a
//!   time between its mmap and its exit. Prints records per exec, MMAP2
//!   records with a build id, and the drain's cost. Exits 1 if a check fails.
//! - `--shell-loop N`: `for i in $(seq N); do /bin/true; done` in `sh`, timed
//!   without the events and then with them; counts the records about the
//!   shell and its children, and all records meanwhile.
//! - `--mmap-cost N`: the kernel's cost of one MMAP2 record, from N
//!   executable mmaps in this process without and with the events.
//! - `--rate R --seconds S`: starts R programs a second for S seconds,
//!   draining every 50 ms (the copy-ring period of a recording) into a
//!   history, and prints the CPU time of drain and apply.
use std::{
    collections::{HashMap, HashSet},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use tripod_user::{
    mappings::{MappingHistory, Scope},
    sampler::sideband::{FileIdentity, SideRecord, Sideband, SidebandOptions},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let result = if let Some(n) = value("--mmap-cost") {
        mmap_cost(n)
    } else if let Some(n) = value("--shell-loop") {
        shell_loop(n)
    } else if let Some(rate) = value("--rate") {
        open().map(|mut s| steady(&mut s, rate, value("--seconds").unwrap_or(10)))
    } else {
        let runs = value("--runs").unwrap_or(50) as usize;
        let show = args.iter().any(|a| a == "--show");
        open().map(|mut s| burst(&mut s, runs, show))
    };
    result.unwrap_or_else(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

fn open() -> Result<Sideband, String> {
    // `--pages N`: a smaller ring, to see losses counted.
    let args: Vec<String> = std::env::args().collect();
    let pages = args
        .iter()
        .position(|a| a == "--pages")
        .and_then(|i| args.get(i + 1)?.parse().ok());
    let options = SidebandOptions {
        pages_per_cpu: pages.unwrap_or(SidebandOptions::default().pages_per_cpu),
        ..SidebandOptions::default()
    };
    let sideband = Sideband::open(&options)
        .map_err(|e| format!("cannot open the sideband events (root needed): {e:#}"))?;
    println!("kernel accepted build_id: {}", sideband.build_ids());
    Ok(sideband)
}

/// What the records said about one pid.
#[derive(Default, Debug)]
struct Seen {
    exec: bool,
    program: Option<(u64, u64)>,
    loader: bool,
    libc: bool,
    exit: Option<u64>,
    mmaps: usize,
    build_ids: usize,
    records: usize,
}

impl Seen {
    fn note(&mut self, record: &SideRecord) {
        self.records += 1;
        match record {
            SideRecord::Comm(c) => self.exec |= c.exec && &*c.comm == b"true",
            SideRecord::Mmap(m) => {
                self.mmaps += 1;
                self.build_ids += usize::from(matches!(m.identity, FileIdentity::BuildId(_)));
                let path = String::from_utf8_lossy(&m.path);
                if path.ends_with("/true") {
                    self.program = Some((m.start, m.time_ns));
                }
                self.loader |= path.contains("/ld-linux");
                self.libc |= path.contains("/libc.so");
            }
            SideRecord::Exit(t) if t.pid == t.tid => self.exit = Some(t.time_ns),
            _ => {}
        }
    }

    fn complete(&self) -> bool {
        self.exec && self.program.is_some() && self.loader && self.libc && self.exit.is_some()
    }
}

/// Runs /bin/true `runs` times, then checks what the records said.
fn burst(sideband: &mut Sideband, runs: usize, show: bool) -> ExitCode {
    // Whatever happened before the runs.
    sideband.drain(|_| {});
    let mut pids = Vec::with_capacity(runs);
    for _ in 0..runs {
        let Ok(mut child) = Command::new("/bin/true").spawn() else {
            return ExitCode::FAILURE;
        };
        pids.push(child.id());
        let _ = child.wait();
    }
    let mut seen: HashMap<u32, Seen> = pids.iter().map(|&p| (p, Seen::default())).collect();
    let mut history = MappingHistory::new(Scope::All);
    let (mut all, mut cost) = (0usize, Duration::ZERO);
    // Past the in-flight allowance, a second drain hands over the rest.
    for _ in 0..3 {
        let started = Instant::now();
        sideband.drain(|record| {
            all += 1;
            if let Some(s) = record.pid().and_then(|p| seen.get_mut(&p)) {
                if show && record.pid() == pids.first().copied() {
                    println!("{record:?}");
                }
                s.note(&record);
            }
            history.apply(record);
        });
        cost += started.elapsed();
        std::thread::sleep(Duration::from_millis(5));
    }
    // A ring that was full reports its loss with the next record written
    // to it: a few more programs, so that each CPU writes one.
    for _ in 0..8 {
        let _ = Command::new("/bin/true").status();
    }
    std::thread::sleep(Duration::from_millis(5));
    let started = Instant::now();
    sideband.drain(|record| {
        all += 1;
        history.apply(record);
    });
    cost += started.elapsed();
    report(&pids, &seen, &history, all, cost, sideband)
}

fn report(
    pids: &[u32],
    seen: &HashMap<u32, Seen>,
    history: &MappingHistory,
    all: usize,
    cost: Duration,
    sideband: &Sideband,
) -> ExitCode {
    let complete = seen.values().filter(|s| s.complete()).count();
    // The program's first byte, located between its mmap and its exit.
    let located = seen
        .iter()
        .filter(|(&pid, s)| {
            let (Some((start, mapped)), Some(exit)) = (s.program, s.exit) else {
                return false;
            };
            let at = mapped + (exit - mapped) / 2;
            history
                .locate(pid, start, at)
                .is_ok_and(|l| l.mapping.file.path.ends_with(b"/true"))
        })
        .count();
    let ours: usize = seen.values().map(|s| s.records).sum();
    let mmaps: usize = seen.values().map(|s| s.mmaps).sum();
    let with_ids: usize = seen.values().map(|s| s.build_ids).sum();
    let n = pids.len() as f64;
    println!(
        "{} runs of /bin/true: {complete} with exec COMM + MMAP2 of true, ld.so and libc + EXIT; \
         {located} located in /usr/bin/true by the history",
        pids.len()
    );
    println!(
        "records: {all} in all, {ours} about these pids ({:.1} per exec), {mmaps} MMAP2 \
         ({:.1} per exec), {with_ids} with a build id",
        ours as f64 / n,
        mmaps as f64 / n
    );
    println!(
        "drains + history: {:.3} ms for {all} records ({:.2} us a record); {:?}; {:?}",
        cost.as_secs_f64() * 1e3,
        cost.as_secs_f64() * 1e6 / all.max(1) as f64,
        sideband.counters(),
        history.stats()
    );
    if complete == pids.len() && located == pids.len() {
        return ExitCode::SUCCESS;
    }
    if let Some((pid, s)) = seen.iter().find(|(_, s)| !s.complete()) {
        println!("incomplete, e.g. pid {pid}: {s:?}");
    }
    ExitCode::FAILURE
}

/// The shell loop, timed without and with the events (drained every 50 ms
/// meanwhile, as a recording would); counts records.
fn shell_loop(n: u64) -> Result<ExitCode, String> {
    let script = format!("for i in $(seq {n}); do /bin/true; done");
    let start = || {
        Command::new("/bin/sh")
            .args(["-c", &script])
            .spawn()
            .map_err(|e| format!("starting sh: {e}"))
    };
    let started = (Instant::now(), children_cpu());
    start()?
        .wait()
        .map_err(|e| format!("waiting for sh: {e}"))?;
    let without = (started.0.elapsed(), children_cpu() - started.1);

    let mut sideband = open()?;
    sideband.drain(|_| {});
    let mut family = HashSet::new();
    let (mut all, mut ours) = (0u64, HashMap::<&str, u64>::new());
    let mut drain_cpu = Duration::ZERO;
    let mut drain = |sideband: &mut Sideband, family: &mut HashSet<u32>| {
        let before = thread_cpu();
        sideband.drain(|record| {
            all += 1;
            if let SideRecord::Fork(t) = &record {
                if family.contains(&t.ppid) {
                    family.insert(t.pid);
                }
            }
            if record.pid().is_some_and(|p| family.contains(&p)) {
                *ours.entry(kind(&record)).or_default() += 1;
            }
        });
        drain_cpu += thread_cpu() - before;
    };
    let started = (Instant::now(), children_cpu());
    let mut shell = start()?;
    family.insert(shell.id());
    let with = loop {
        std::thread::sleep(Duration::from_millis(50));
        drain(&mut sideband, &mut family);
        if let Ok(Some(_)) = shell.try_wait() {
            break (started.0.elapsed(), children_cpu() - started.1);
        }
    };
    std::thread::sleep(Duration::from_millis(5));
    drain(&mut sideband, &mut family);
    let total: u64 = ours.values().sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{n} runs of /bin/true from sh: without the events {:.0} ms ({:.0} ms CPU), with them \
         {:.0} ms (drained every 50 ms, so up to 50 ms late; {:.0} ms CPU)",
        ms(without.0),
        ms(without.1),
        ms(with.0),
        ms(with.1),
    );
    println!(
        "{total} records about sh and its {} children ({:.2} a run): {ours:?}; {all} records in \
         all; drain CPU {:.1} ms ({:.2} us a record); {:?}",
        family.len() - 1,
        total as f64 / n as f64,
        drain_cpu.as_secs_f64() * 1e3,
        drain_cpu.as_secs_f64() * 1e6 / all.max(1) as f64,
        sideband.counters()
    );
    Ok(ExitCode::SUCCESS)
}

/// The kernel's cost of a record: `n` executable mmaps (and munmaps) of
/// /usr/bin/true in this process, without the events, with them, and with
/// them but no build ids. Drained every 500 mmaps, so nothing is lost.
fn mmap_cost(n: u64) -> Result<ExitCode, String> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open("/usr/bin/true").map_err(|e| e.to_string())?;
    let one_round = |mut sideband: Option<Sideband>| {
        let started = Instant::now();
        let (mut records, mut draining) = (0u64, Duration::ZERO);
        for i in 0..n {
            // SAFETY: a fresh private read-only mapping, unmapped at once.
            unsafe {
                let at = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                );
                if at != libc::MAP_FAILED {
                    libc::munmap(at, 4096);
                }
            }
            if i % 500 == 0 {
                if let Some(s) = sideband.as_mut() {
                    let drain_started = Instant::now();
                    s.drain(|_| records += 1);
                    draining += drain_started.elapsed();
                }
            }
        }
        // The kernel's part only: the drains are measured apart.
        let elapsed = started.elapsed() - draining;
        if let Some(s) = sideband.as_mut() {
            std::thread::sleep(Duration::from_millis(5));
            s.drain(|_| records += 1);
            let c = s.counters();
            println!(
                "  {records} records, {} lost, drains {:.2} us a record",
                c.lost,
                draining.as_secs_f64() * 1e6 / records.max(1) as f64
            );
        }
        elapsed.as_secs_f64() * 1e9 / n as f64
    };
    let without = one_round(None);
    let with = one_round(Some(open()?));
    let no_ids = Sideband::open(&SidebandOptions {
        build_ids: false,
        ..SidebandOptions::default()
    })
    .map_err(|e| format!("{e:#}"))?;
    let without_ids = one_round(Some(no_ids));
    println!(
        "mmap+munmap of an executable page: {without:.0} ns without the events, {with:.0} ns \
         with them ({:+.0} ns a record), {without_ids:.0} ns without build ids ({:+.0} ns)",
        with - without,
        without_ids - without
    );
    Ok(ExitCode::SUCCESS)
}

fn kind(record: &SideRecord) -> &'static str {
    match record {
        SideRecord::Mmap(_) => "mmap2",
        SideRecord::Comm(c) if c.exec => "comm_exec",
        SideRecord::Comm(_) => "comm",
        SideRecord::Fork(t) if t.pid == t.ppid => "thread",
        SideRecord::Fork(_) => "fork",
        SideRecord::Exit(_) => "exit",
        SideRecord::Lost(_) => "lost",
    }
}

/// Starts `rate` programs a second for `seconds`, draining every 50 ms
/// into a history, and prints the CPU time of drain and apply.
fn steady(sideband: &mut Sideband, rate: u64, seconds: u64) -> ExitCode {
    sideband.drain(|_| {});
    let mut history = MappingHistory::new(Scope::All);
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut next_run, mut next_drain) = (Instant::now(), Instant::now());
    let (mut runs, mut records, mut drains) = (0u64, 0u64, 0u64);
    let (mut drain_cpu, mut apply_cpu) = (Duration::ZERO, Duration::ZERO);
    let mut children = Vec::new();
    let mut batch = Vec::new();
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_run {
            if let Ok(child) = Command::new("/bin/true").spawn() {
                children.push(child);
                runs += 1;
            }
            next_run += every;
        }
        if now >= next_drain {
            let t0 = thread_cpu();
            let drained = sideband.drain(|r| batch.push(r));
            let t1 = thread_cpu();
            records += batch.len() as u64;
            for record in batch.drain(..) {
                history.apply(record);
            }
            // Samples lag the sideband by one drain (see the integration plan).
            history.release_up_to(drained.watermark_ns.saturating_sub(50_000_000));
            apply_cpu += thread_cpu() - t1;
            drain_cpu += t1 - t0;
            drains += 1;
            next_drain += Duration::from_millis(50);
        }
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        std::thread::sleep(Duration::from_micros(500));
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / records.max(1) as f64;
    println!(
        "{runs} programs in {seconds} s ({:.0}/s): {records} records in {drains} drains; \
         drain CPU {:.1} ms ({:.3}% of a CPU, {:.2} us a record), history CPU {:.1} ms \
         ({:.3}%, {:.2} us a record)",
        runs as f64 / seconds as f64,
        drain_cpu.as_secs_f64() * 1e3,
        drain_cpu.as_secs_f64() * 100.0 / seconds as f64,
        per(drain_cpu),
        apply_cpu.as_secs_f64() * 1e3,
        apply_cpu.as_secs_f64() * 100.0 / seconds as f64,
        per(apply_cpu),
    );
    println!("{:?}; {:?}", sideband.counters(), history.stats());
    ExitCode::SUCCESS
}

/// CPU time (user + system) of the children waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
