//! What `top` shows, with no terminal in sight: each refresh's report
//! counted by thread and by function (or whole stack), a sliding window of
//! the last refreshes for the percentages and the rate, totals since the
//! start (or the last reset) for the times, and the viewer's choices (sort,
//! functions or stacks, filter, pause). The screen and the plain table only
//! draw the [`View`] this builds, so everything here is unit-tested.
use std::{
    cmp::Ordering,
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use crate::{
    config::Mode,
    model::{short_file, Frame, FrameKind},
    report::{Report, RunInfo},
    text::escape_controls,
};

/// The most rows the totals since the start keep, for the functions and for
/// the stacks each: `--all` on a busy machine meets new stacks all the
/// time, and a view left open for days must not grow without end. Past it,
/// new rows still show in the window; the header says the times are partial.
const MAX_TOTAL_ROWS: usize = 100_000;

/// What a row stands for: a function and where it is, or a whole stack and
/// its process. Names come from targets and are escaped (see [`Entry::new`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub name: Arc<str>,
    /// `file:line` for Python, the source file or module for native code,
    /// `[kernel]`; the process name for a stack.
    pub location: Arc<str>,
}

impl Entry {
    fn new(name: &str, location: &str) -> Entry {
        Entry {
            name: escape_controls(name).into(),
            location: escape_controls(location).into(),
        }
    }
}

/// Samples (or microseconds off-CPU) with the entry innermost, and with it anywhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    own: u64,
    total: u64,
}

/// A thread: (pid, tid).
type ThreadId = (u32, u32);

/// Counts by thread and entry, for the functions and for the whole stacks.
#[derive(Default)]
struct Tally {
    functions: HashMap<(ThreadId, Entry), Counts>,
    stacks: HashMap<(ThreadId, Entry), Counts>,
    /// Every count of each thread, the denominator of the percentages.
    samples: HashMap<ThreadId, u64>,
}

impl Tally {
    /// Adds `other` in, keeping at most `limit` rows in each map.
    fn add(&mut self, other: &Tally, limit: usize) -> bool {
        let mut complete = true;
        for (mine, theirs) in [
            (&mut self.functions, &other.functions),
            (&mut self.stacks, &other.stacks),
        ] {
            for (key, counts) in theirs {
                let room = mine.len() < limit;
                match mine.get_mut(key) {
                    Some(c) => {
                        c.own += counts.own;
                        c.total += counts.total;
                    }
                    None if room => {
                        mine.insert(key.clone(), *counts);
                    }
                    None => complete = false,
                }
            }
        }
        for (thread, n) in &other.samples {
            *self.samples.entry(*thread).or_default() += n;
        }
        complete
    }
}

/// One refresh, counted.
struct Slice {
    seconds: f64,
    lost: u64,
    tally: Tally,
}

/// What the rows are sorted by: py-spy top's keys 1 to 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    OwnShare,
    TotalShare,
    OwnTime,
    TotalTime,
}

/// Functions, or whole stacks (innermost frame first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    Functions,
    Stacks,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub entry: Entry,
    /// Percent of the window's samples with the entry innermost.
    pub own_share: f64,
    /// Percent of the window's samples with the entry anywhere.
    pub total_share: f64,
    /// Seconds (on CPU, off it, or of wall-clock time) since the start or reset.
    pub own_seconds: f64,
    pub total_seconds: f64,
}

/// The facts the header shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub target: String,
    pub mode: Mode,
    pub event: String,
    pub frequency: u64,
    /// Samples per second over the window (seconds off-CPU per second for off-cpu).
    pub rate: f64,
    /// Samples lost over the window.
    pub lost: u64,
    pub processes: usize,
    pub threads: usize,
    pub window_seconds: f64,
    /// The filter, for people: `pid 42 (python3)`, `thread 43 (worker)`.
    pub filter: Option<String>,
    pub sort: SortBy,
    pub show: Show,
    pub paused: bool,
    /// The times stopped counting new rows (see [`MAX_TOTAL_ROWS`]).
    pub partial_times: bool,
}

/// What is drawn on each refresh.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub header: Header,
    /// Sorted, the largest first.
    pub rows: Vec<Row>,
}

/// What a key asks for, once the model has done its part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Draw again: something the view shows changed.
    Redraw,
    Quit,
    /// A key that means nothing here.
    Ignore,
}

/// The state of one `top` session.
pub struct Top {
    run: RunInfo,
    window_seconds: f64,
    window: VecDeque<Slice>,
    since_start: Tally,
    partial_times: bool,
    names: HashMap<ThreadId, (Arc<str>, Arc<str>)>,
    sort: SortBy,
    show: Show,
    pid: Option<u32>,
    tid: Option<u32>,
    paused: bool,
}

impl Top {
    pub fn new(run: RunInfo, window_seconds: f64) -> Top {
        Top {
            run,
            window_seconds,
            window: VecDeque::new(),
            since_start: Tally::default(),
            partial_times: false,
            names: HashMap::new(),
            sort: SortBy::OwnShare,
            show: Show::Functions,
            pid: None,
            tid: None,
            paused: false,
        }
    }

    /// Counts one refresh's report in, unless paused (then it is dropped:
    /// the view stays as it was), and lets refreshes older than the window go.
    pub fn push(&mut self, report: &Report) {
        if self.paused {
            return;
        }
        let seconds = (report.end - report.start).num_milliseconds().max(1) as f64 / 1000.0;
        let tally = self.count(report);
        self.partial_times |= !self.since_start.add(&tally, MAX_TOTAL_ROWS);
        self.window.push_back(Slice {
            seconds,
            lost: report.losses.dropped(),
            tally,
        });
        // Keep the newest refreshes that together cover the window.
        while self.window.len() > 1 {
            let without_oldest: f64 = self.window.iter().skip(1).map(|s| s.seconds).sum();
            if without_oldest < self.window_seconds * 0.999 {
                break;
            }
            self.window.pop_front();
        }
    }

    fn count(&mut self, report: &Report) -> Tally {
        let mut tally = Tally::default();
        for stack in &report.stacks {
            let tid = stack.thread.as_ref().map_or(stack.pid, |(tid, _)| *tid);
            let thread = (stack.pid, tid);
            let thread_name = stack.thread.as_ref().map_or("", |(_, name)| name.as_str());
            self.names.insert(
                thread,
                (
                    escape_controls(&stack.comm).into(),
                    escape_controls(thread_name).into(),
                ),
            );
            let n = stack.count;
            *tally.samples.entry(thread).or_default() += n;
            // A function inlined into another counts as that one, as perf
            // top counts it by symbol: the stacks view still shows it.
            let entries: Vec<Entry> = stack
                .frames
                .iter()
                .filter(|f| !f.inlined)
                .map(|f| function_entry(f))
                .collect();
            let mut seen = HashSet::new();
            for entry in &entries {
                if seen.insert(entry) {
                    let c = tally.functions.entry((thread, entry.clone())).or_default();
                    c.total += n;
                }
            }
            if let Some(leaf) = entries.last() {
                tally
                    .functions
                    .entry((thread, leaf.clone()))
                    .or_default()
                    .own += n;
            }
            let whole = stack_entry(&stack.frames, &stack.comm);
            let c = tally.stacks.entry((thread, whole)).or_default();
            c.own += n;
            c.total += n;
        }
        tally
    }

    /// Forgets every count: the window and the times start again from now.
    pub fn reset(&mut self) {
        self.window.clear();
        self.since_start = Tally::default();
        self.partial_times = false;
    }

    /// Applies a key: 1-4 sort, `s` switches functions and stacks, `p` and
    /// `t` step through the processes and threads of the window (then back
    /// to all), space pauses, `r` resets, `q` quits.
    pub fn press(&mut self, key: char) -> Action {
        match key {
            '1' => self.sort = SortBy::OwnShare,
            '2' => self.sort = SortBy::TotalShare,
            '3' => self.sort = SortBy::OwnTime,
            '4' => self.sort = SortBy::TotalTime,
            's' | 'S' => {
                self.show = match self.show {
                    Show::Functions => Show::Stacks,
                    Show::Stacks => Show::Functions,
                }
            }
            'p' | 'P' => {
                let pids = self.busiest(|_| true, |(pid, _)| pid);
                self.pid = next_of(&pids, self.pid);
                self.tid = None;
            }
            't' | 'T' => {
                let pid = self.pid;
                let tids = self.busiest(|(p, _)| pid.is_none_or(|want| want == p), |(_, t)| t);
                self.tid = next_of(&tids, self.tid);
            }
            ' ' => self.paused = !self.paused,
            'r' | 'R' => self.reset(),
            'q' | 'Q' => return Action::Quit,
            _ => return Action::Ignore,
        }
        Action::Redraw
    }

    /// The keys (pids or tids) of the window's threads that `keep` keeps,
    /// the most sampled first.
    fn busiest(&self, keep: impl Fn(ThreadId) -> bool, key: impl Fn(ThreadId) -> u32) -> Vec<u32> {
        let mut by_key: HashMap<u32, u64> = HashMap::new();
        for slice in &self.window {
            for (&thread, &n) in &slice.tally.samples {
                if keep(thread) {
                    *by_key.entry(key(thread)).or_default() += n;
                }
            }
        }
        let mut keys: Vec<(u32, u64)> = by_key.into_iter().collect();
        keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        keys.into_iter().map(|(k, _)| k).collect()
    }

    fn selected(&self, (pid, tid): ThreadId) -> bool {
        self.pid.is_none_or(|p| p == pid) && self.tid.is_none_or(|t| t == tid)
    }

    /// What to draw now.
    pub fn view(&self) -> View {
        let mut in_window: HashMap<&Entry, Counts> = HashMap::new();
        let (mut samples, mut lost, mut seconds) = (0u64, 0u64, 0f64);
        let mut threads = HashSet::new();
        for slice in &self.window {
            lost += slice.lost;
            seconds += slice.seconds;
            for (&thread, &n) in &slice.tally.samples {
                if self.selected(thread) {
                    samples += n;
                    threads.insert(thread);
                }
            }
            for ((thread, entry), c) in self.rows_of(&slice.tally) {
                if self.selected(*thread) {
                    let sum = in_window.entry(entry).or_default();
                    sum.own += c.own;
                    sum.total += c.total;
                }
            }
        }
        let mut totals: HashMap<&Entry, Counts> = HashMap::new();
        for ((thread, entry), c) in self.rows_of(&self.since_start) {
            if self.selected(*thread) {
                let sum = totals.entry(entry).or_default();
                sum.own += c.own;
                sum.total += c.total;
            }
        }
        let unit = self.seconds_per_count();
        let share = |n: u64| {
            if samples == 0 {
                0.0
            } else {
                n as f64 * 100.0 / samples as f64
            }
        };
        let mut rows: Vec<Row> = totals
            .iter()
            .map(|(entry, total)| {
                let now = in_window.get(entry).copied().unwrap_or_default();
                Row {
                    entry: (*entry).clone(),
                    own_share: share(now.own),
                    total_share: share(now.total),
                    own_seconds: total.own as f64 * unit,
                    total_seconds: total.total as f64 * unit,
                }
            })
            .collect();
        rows.sort_by(|a, b| self.order(a, b));
        let processes: HashSet<u32> = threads.iter().map(|(pid, _)| *pid).collect();
        let rate = if seconds > 0.0 {
            samples as f64 / seconds
        } else {
            0.0
        };
        View {
            header: Header {
                target: self.run.target.clone(),
                mode: self.run.mode,
                event: self.run.event.clone(),
                frequency: self.run.frequency,
                rate: if self.run.mode == Mode::OffCpu {
                    rate * unit
                } else {
                    rate
                },
                lost,
                processes: processes.len(),
                threads: threads.len(),
                window_seconds: seconds,
                filter: self.filter_label(),
                sort: self.sort,
                show: self.show,
                paused: self.paused,
                partial_times: self.partial_times,
            },
            rows,
        }
    }

    fn rows_of<'a>(
        &self,
        tally: &'a Tally,
    ) -> impl Iterator<Item = (&'a (ThreadId, Entry), &'a Counts)> {
        match self.show {
            Show::Functions => tally.functions.iter(),
            Show::Stacks => tally.stacks.iter(),
        }
    }

    /// Seconds one count stands for: a sample period, or a microsecond off-CPU.
    fn seconds_per_count(&self) -> f64 {
        match self.run.mode {
            Mode::OffCpu => 1e-6,
            Mode::Cpu | Mode::Wall => 1.0 / self.run.frequency.max(1) as f64,
        }
    }

    fn order(&self, a: &Row, b: &Row) -> Ordering {
        let key = |r: &Row| match self.sort {
            SortBy::OwnShare => (r.own_share, r.total_share),
            SortBy::TotalShare => (r.total_share, r.own_share),
            SortBy::OwnTime => (r.own_seconds, r.total_seconds),
            SortBy::TotalTime => (r.total_seconds, r.own_seconds),
        };
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.total_cmp(&ka.1))
            .then_with(|| a.entry.name.cmp(&b.entry.name))
            .then_with(|| a.entry.location.cmp(&b.entry.location))
    }

    fn filter_label(&self) -> Option<String> {
        let name_of = |want: &dyn Fn(&ThreadId) -> bool,
                       pick: fn(&(Arc<str>, Arc<str>)) -> &str| {
            self.names
                .iter()
                .find(|(thread, _)| want(thread))
                .map(|(_, names)| pick(names).to_string())
                .unwrap_or_default()
        };
        match (self.pid, self.tid) {
            (None, None) => None,
            (Some(pid), None) => Some(format!(
                "pid {pid} ({})",
                name_of(&|t| t.0 == pid, |n| &n.0)
            )),
            (_, Some(tid)) => Some(format!(
                "thread {tid} ({})",
                name_of(&|t| t.1 == tid, |n| &n.1)
            )),
        }
    }
}

/// The next of `keys` after `current`; after the last, or when `current`
/// is gone from the window, back to none (everything).
fn next_of(keys: &[u32], current: Option<u32>) -> Option<u32> {
    match current {
        None => keys.first().copied(),
        Some(now) => {
            let at = keys.iter().position(|&k| k == now)?;
            keys.get(at + 1).copied()
        }
    }
}

/// A function and where it is: Python frames by function, file and line
/// (as py-spy top); native code by function and source file (or module),
/// so that one function's samples on its many lines make one row.
fn function_entry(frame: &Frame) -> Entry {
    let name = match (&frame.function, frame.kind) {
        (Some(function), _) => function.to_string(),
        (None, _) => frame.short_name(),
    };
    let location = match (frame.kind, &frame.file, frame.line) {
        (FrameKind::Python, Some(file), Some(line)) => format!("{}:{line}", short_file(file)),
        (FrameKind::Python, Some(file), None) => short_file(file).to_string(),
        _ if frame.kernel => "[kernel]".to_string(),
        (_, Some(file), _) => file.rsplit('/').next().unwrap_or(file).to_string(),
        _ => frame.module_name().unwrap_or("").to_string(),
    };
    Entry::new(&name, &location)
}

/// A whole stack, innermost frame first, and its process.
fn stack_entry(frames: &[Arc<Frame>], comm: &str) -> Entry {
    let names: Vec<String> = frames.iter().rev().map(|f| f.short_name()).collect();
    Entry::new(&names.join(" < "), comm)
}

#[cfg(test)]
mod tests {
    use chrono::{Duration as Span, Local};

    use super::*;
    use crate::{report::StackReport, task::TaskState};

    fn run(mode: Mode) -> RunInfo {
        RunInfo {
            target: "pid 42".into(),
            mode,
            frequency: 100,
            event: "cpu-clock".into(),
            per_thread: true,
            stack_storage_size: 1,
            count_map_size: 1,
            unwind: "dwarf".into(),
            ring_buffer_size: 1,
        }
    }

    fn native(name: &str, file: &str, line: u32) -> Arc<Frame> {
        Arc::new(Frame {
            function: Some(name.into()),
            file: Some(file.into()),
            line: Some(line),
            ..Frame::code(false, Some(0x1000))
        })
    }

    fn python(name: &str, file: &str, line: u32) -> Arc<Frame> {
        Arc::new(Frame {
            function: Some(name.into()),
            file: Some(file.into()),
            line: Some(line),
            ..Frame::python()
        })
    }

    /// A stack of thread `tid` of process 42 (or `pid`), outermost first.
    fn stack(pid: u32, tid: u32, count: u64, frames: Vec<Arc<Frame>>) -> StackReport {
        StackReport {
            pid,
            comm: format!("proc{pid}"),
            ns_pid: None,
            cgroup: None,
            thread: Some((tid, format!("thread{tid}"))),
            tids: vec![tid],
            count,
            state: TaskState::Running,
            annotation: None,
            frames: frames.into(),
        }
    }

    /// A one-second report of `stacks`.
    fn report(stacks: Vec<StackReport>) -> Report {
        let end = Local::now();
        Report {
            run: run(Mode::Cpu),
            start: end - Span::seconds(1),
            end,
            samples: stacks.iter().map(|s| s.count).sum(),
            losses: Default::default(),
            stacks,
            processes: Vec::new(),
        }
    }

    /// The split fixture's shape: main calls heavy 3 times as much as light.
    fn split(scale: u64) -> Report {
        let main = native("main", "/src/split.c", 30);
        report(vec![
            stack(
                42,
                42,
                75 * scale,
                vec![main.clone(), native("heavy", "/src/split.c", 27)],
            ),
            stack(
                42,
                42,
                24 * scale,
                vec![main.clone(), native("light", "/src/split.c", 28)],
            ),
            stack(42, 42, scale, vec![main]),
        ])
    }

    fn names(view: &View) -> Vec<&str> {
        view.rows.iter().map(|r| &*r.entry.name).collect()
    }

    fn row<'a>(view: &'a View, name: &str) -> &'a Row {
        view.rows.iter().find(|r| &*r.entry.name == name).unwrap()
    }

    #[test]
    fn own_and_total_shares_and_times() {
        let mut top = Top::new(run(Mode::Cpu), 1.0);
        top.push(&split(1));
        let view = top.view();
        assert_eq!(names(&view), ["heavy", "light", "main"]);
        let heavy = row(&view, "heavy");
        assert_eq!((heavy.own_share, heavy.total_share), (75.0, 75.0));
        assert_eq!(heavy.entry.location.as_ref(), "split.c");
        let main = row(&view, "main");
        assert_eq!((main.own_share, main.total_share), (1.0, 100.0));
        // 100 samples at 100 Hz: one second.
        assert!((main.total_seconds - 1.0).abs() < 1e-9);
        assert_eq!(view.header.rate, 100.0);
        assert_eq!((view.header.processes, view.header.threads), (1, 1));
    }

    #[test]
    fn inlined_functions_count_as_their_caller() {
        let mut top = Top::new(run(Mode::Cpu), 1.0);
        let work = Arc::new(Frame {
            inlined: true,
            ..(*native("work", "/src/split.c", 22)).clone()
        });
        let main = native("main", "/src/split.c", 30);
        let heavy = native("heavy", "/src/split.c", 27);
        top.push(&report(vec![stack(42, 42, 4, vec![main, heavy, work])]));
        assert_eq!(names(&top.view()), ["heavy", "main"]);
        assert_eq!(row(&top.view(), "heavy").own_share, 100.0);
        top.press('s');
        assert_eq!(&*top.view().rows[0].entry.name, "work < heavy < main");
    }

    #[test]
    fn sort_keys_change_the_order() {
        let mut top = Top::new(run(Mode::Cpu), 1.0);
        top.push(&split(1));
        assert_eq!(top.press('2'), Action::Redraw);
        assert_eq!(names(&top.view()), ["main", "heavy", "light"]);
        top.press('1');
        assert_eq!(names(&top.view())[0], "heavy");
        top.press('4');
        assert_eq!(names(&top.view())[0], "main");
        assert_eq!(top.press('x'), Action::Ignore);
        assert_eq!(top.press('q'), Action::Quit);
    }

    #[test]
    fn shares_follow_the_window_and_times_add_up() {
        // A 2 s window over 1 s refreshes: the last two count.
        let mut top = Top::new(run(Mode::Cpu), 2.0);
        top.push(&split(1));
        let only_light = |n| report(vec![stack(42, 42, n, vec![native("light", "/s.c", 1)])]);
        top.push(&only_light(100));
        top.push(&only_light(100));
        let view = top.view();
        let light = row(&view, "light");
        assert_eq!(light.own_share, 100.0);
        assert_eq!(row(&view, "heavy").own_share, 0.0);
        // The times count since the start: 0.75 s of heavy is still there.
        assert!((row(&view, "heavy").own_seconds - 0.75).abs() < 1e-9);
        assert!((view.header.window_seconds - 2.0).abs() < 1e-9);
        top.press('r');
        assert!(top.view().rows.is_empty());
    }

    #[test]
    fn pause_keeps_the_view() {
        let mut top = Top::new(run(Mode::Cpu), 1.0);
        top.push(&split(1));
        top.press(' ');
        top.push(&report(vec![stack(
            42,
            42,
            9,
            vec![native("other", "/o.c", 1)],
        )]));
        let view = top.view();
        assert!(view.header.paused);
        assert_eq!(names(&view), ["heavy", "light", "main"]);
    }

    #[test]
    fn filters_step_through_processes_and_threads() {
        let mut top = Top::new(run(Mode::Cpu), 1.0);
        top.push(&report(vec![
            stack(42, 42, 30, vec![native("a", "/a.c", 1)]),
            stack(42, 43, 10, vec![native("b", "/b.c", 1)]),
            stack(7, 7, 20, vec![native("c", "/c.c", 1)]),
        ]));
        assert_eq!(top.view().header.processes, 2);
        top.press('p');
        let view = top.view();
        assert_eq!(view.header.filter.as_deref(), Some("pid 42 (proc42)"));
        assert_eq!(row(&view, "a").own_share, 75.0);
        assert!(!names(&view).contains(&"c"), "another process shown");
        top.press('t');
        top.press('t');
        let view = top.view();
        assert_eq!(view.header.filter.as_deref(), Some("thread 43 (thread43)"));
        assert_eq!(row(&view, "b").own_share, 100.0);
        top.press('p');
        top.press('p');
        assert_eq!(top.view().header.filter, None);
    }

    #[test]
    fn stacks_view_and_python_lines() {
        let mut top = Top::new(run(Mode::Cpu), 1.0);
        let outer = python("outer", "/app/x.py", 3);
        top.push(&report(vec![
            stack(
                42,
                42,
                3,
                vec![outer.clone(), python("inner", "/app/x.py", 9)],
            ),
            stack(42, 42, 1, vec![outer]),
        ]));
        let view = top.view();
        assert_eq!(row(&view, "inner").entry.location.as_ref(), "/app/x.py:9");
        top.press('s');
        let view = top.view();
        assert_eq!(view.header.show, Show::Stacks);
        assert_eq!(
            &*view.rows[0].entry.name,
            "inner (/app/x.py:9) < outer (/app/x.py:3)"
        );
        assert_eq!(view.rows[0].own_share, 75.0);
    }

    #[test]
    fn names_from_targets_are_escaped() {
        let mut top = Top::new(run(Mode::Cpu), 1.0);
        top.push(&report(vec![stack(
            42,
            42,
            1,
            vec![native("x\u{1b}[2J", "/a\n.c", 1)],
        )]));
        let view = top.view();
        assert_eq!(&*view.rows[0].entry.name, "x\\x1b[2J");
        assert_eq!(&*view.rows[0].entry.location, "a\\x0a.c");
    }

    #[test]
    fn off_cpu_counts_are_microseconds() {
        let mut top = Top::new(run(Mode::OffCpu), 1.0);
        top.push(&report(vec![stack(
            42,
            42,
            500_000,
            vec![native("wait", "/w.c", 1)],
        )]));
        let view = top.view();
        assert!((view.header.rate - 0.5).abs() < 1e-9);
        assert!((view.rows[0].own_seconds - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_plain_table_has_the_header_and_the_rows() {
        let mut top = Top::new(run(Mode::Cpu), 1.0);
        top.push(&split(1));
        let text = super::super::format::plain(&top.view(), 2);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("pid 42") && lines[0].contains("cpu-clock"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("100.0 samples/s, 0 lost, 1 process, 1 thread"),
            "{text}"
        );
        assert!(lines[2].contains("%Own*"), "{text}");
        assert!(
            lines[3].contains("75.0%") && lines[3].ends_with("heavy (split.c)"),
            "{text}"
        );
        assert_eq!(lines.len(), 5, "two rows at most: {text}");
    }
}
