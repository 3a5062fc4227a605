//! The first stage: a thread's stacks as the kernel sent them, to typed raw
//! frames, innermost first. Copied user stacks are unwound ([`crate::unwind`]),
//! halves that mean nothing are left out rather than shown as failures, and
//! the interpreter's frames of Python threads are merged in place of its
//! native ones ([`crate::python`]). Counting the result is the aggregator's
//! job; naming it the resolver's.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tripod_common::{errno::EFAULT, MAX_STACK_DEPTH};

use crate::{
    mappings::MappingHistory,
    model::{TableFile, TableMapping},
    process::{ProcessTable, SharedFile},
    python::{Python, PythonChange},
    sampler::{Sample, UserStack},
    stack::{self, Gap, RawFrame, StackRead},
    unwind::{Unwinder, UserRegs},
};

/// Unwinds and merges; keeps per process what unwinding and Python need.
pub struct Ingest {
    unwinder: Unwinder,
    python: Python,
    /// Processes to check for Python: new ones, and ones that may have exec'd.
    python_candidates: Vec<u32>,
    /// Collect user stacks at all (not `--kernel-only`).
    collect_user: bool,
    /// `--unwind tables`: processes whose rows the sampler needs (new ones,
    /// ones that may have exec'd); `None` in other modes.
    table_candidates: Option<Vec<u32>>,
    /// `--unwind tables`: when each process's rows were last sent again
    /// because one of its stacks was copied (see [`Ingest::unwind`]).
    /// When, and how long until the next may be.
    tables_resent: HashMap<u32, (Instant, Duration)>,
    /// `--unwind tables`: the processes whose rows were handed to the
    /// sampler and not withdrawn since, with when (CLOCK_MONOTONIC ns, the
    /// samples' clock): a stack copied before then needs no new rows.
    tables_sent: HashMap<u32, u64>,
    /// `--unwind tables`: processes whose leader exited, and when: their
    /// rows are sent again only for a stack sampled after that (the
    /// process lives on without its leader), until they are forgotten.
    tables_exited: HashMap<u32, u64>,
    /// `--unwind tables`: processes whose rows the sampler must drop (they
    /// exited or exec'd), see [`Ingest::tables_gone`].
    tables_gone: Vec<u32>,
}

/// How soon a process's rows are first rebuilt because its stacks are still
/// copied (a library it loaded since, say): the same period as the process
/// table's re-reads of `/proc/PID/maps`. Each rebuild doubles the wait, up
/// to [`TABLES_RESEND_MAX`]: code no rows will ever cover (JIT code, a file
/// over the bound) must not cost a `/proc` read four times a second.
const TABLES_RESEND_INTERVAL: Duration = Duration::from_millis(250);
const TABLES_RESEND_MAX: Duration = Duration::from_secs(16);

impl Ingest {
    pub fn new(python: Python, collect_user: bool) -> Self {
        Ingest {
            unwinder: Unwinder::new(),
            python,
            python_candidates: Vec::new(),
            collect_user,
            table_candidates: None,
            tables_resent: HashMap::new(),
            tables_sent: HashMap::new(),
            tables_exited: HashMap::new(),
            tables_gone: Vec::new(),
        }
    }

    /// `--unwind tables`: from now on, processes seen get their rows compiled
    /// (see [`Ingest::table_changes`]).
    pub fn compile_tables(&mut self) {
        self.table_candidates.get_or_insert_with(Vec::new);
    }

    /// `--unwind tables`: from now on, processes seen get their rows
    /// compiled; the rows of the files most processes map are compiled now,
    /// to load before any process is (see [`Unwinder::prepare_tables`]).
    pub fn prepare_tables(&mut self, shared: &[SharedFile]) -> Vec<TableFile> {
        self.compile_tables();
        self.unwinder.prepare_tables(shared)
    }

    /// `--unwind tables`: the rows of the processes seen since the last
    /// call, to hand to the sampler, then to confirm with [`Ingest::tables_handed`].
    pub fn table_changes(&mut self, processes: &mut ProcessTable) -> Vec<(u32, Vec<TableMapping>)> {
        let Some(candidates) = self.table_candidates.as_mut() else {
            return Vec::new();
        };
        // Processes whose files' rows arrived: their rows are sent again, whole.
        candidates.extend(self.unwinder.tables_compiled());
        let mut pids = std::mem::take(candidates);
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .filter_map(|pid| Some((pid, self.unwinder.tables(pid, processes)?)))
            .collect()
    }

    /// `--unwind tables`: the rows of `pids` (from [`Ingest::table_changes`])
    /// are in the kernel as of `now_ns` (CLOCK_MONOTONIC): stacks copied
    /// after that ask for them to be rebuilt (see [`Ingest::resend_tables`]).
    pub fn tables_handed(&mut self, pids: impl IntoIterator<Item = u32>, now_ns: u64) {
        self.tables_sent
            .extend(pids.into_iter().map(|pid| (pid, now_ns)));
    }

    /// `--unwind tables`: whether rows of `pid` are in the kernel.
    pub fn rows_sent(&self, pid: u32) -> bool {
        self.tables_sent.contains_key(&pid)
    }

    /// `--unwind tables`: the processes whose rows the sampler must drop
    /// since the last call, to hand over before [`Ingest::table_changes`]
    /// (a process that exec'd may get new rows in the same round).
    pub fn tables_gone(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.tables_gone)
    }

    /// `--unwind tables`: process `pid` exec'd or exited, so the rows the
    /// sampler has for it describe mappings that are gone: they are
    /// dropped at the next [`Ingest::tables_gone`], and its stacks copied
    /// until new rows are sent (see [`Ingest::resend_tables`]).
    pub fn drop_tables(&mut self, pid: u32) {
        // A new image starts the back-off of its rebuilds afresh.
        self.tables_resent.remove(&pid);
        if self.tables_sent.remove(&pid).is_some() {
            self.tables_gone.push(pid);
        }
    }

    /// `--unwind tables`: process `pid` exec'd at `exec_ns`: its rows are
    /// dropped, unless they were sent after the exec (read from `/proc`
    /// when the new image's first copy arrived before the exec's record).
    pub fn tables_exec(&mut self, pid: u32, exec_ns: u64) {
        match self.tables_sent.get(&pid) {
            Some(&sent_ns) if sent_ns > exec_ns => {}
            _ => self.drop_tables(pid),
        }
    }

    /// `--unwind tables`: the leader of process `pid` exited at `exit_ns`:
    /// its rows are dropped, and not sent again for the samples taken
    /// before, which still arrive.
    pub fn tables_exited(&mut self, pid: u32, exit_ns: u64) {
        self.drop_tables(pid);
        self.tables_exited.insert(pid, exit_ns);
    }

    /// `--unwind tables`: process `pid` mapped code, the sideband says. Rows
    /// sent before may lack it, so the next copy rebuilds them at once,
    /// without the wait an earlier rebuild started: that one may have come
    /// too early (a stack sampled inside `execve`, after the new program was
    /// mapped but with the old program's registers, is copied, and its
    /// rebuild found nothing new; libc, mapped next, then waited 250 ms).
    pub fn tables_mapped(&mut self, pid: u32) {
        self.tables_resent.remove(&pid);
    }

    /// `--unwind tables`: compile the rows of `pid` at the next [`Ingest::table_changes`].
    pub fn queue_tables(&mut self, pid: u32) {
        if let Some(candidates) = self.table_candidates.as_mut() {
            candidates.push(pid);
        }
    }

    /// `--unwind tables`: a stack of `pid` was copied and has just reached
    /// userspace (it may wait for the sideband before it is unwound): if
    /// the kernel has no rows for `pid`, they are asked for now, at this
    /// pull, so that its next samples are walked within milliseconds
    /// rather than copied until the sample is taken; if it has rows that
    /// lack something, they are rebuilt now too (see [`Ingest::resend_tables`]).
    /// Under load the sideband lags, and a copy waits for it long enough
    /// that a command's first rows, built before its libc was mapped, cost
    /// it a third of a second of copies.
    pub fn copied_stack_arrived(
        &mut self,
        pid: u32,
        sampled_ns: u64,
        processes: &mut ProcessTable,
    ) {
        match self.tables_sent.contains_key(&pid) {
            true => self.resend_tables(pid, sampled_ns, processes),
            false => self.ask_first_rows(pid, sampled_ns),
        }
    }

    /// Asks for the first rows of `pid`, whose stack sampled at
    /// `sampled_ns` was copied, unless its leader had exited by then.
    fn ask_first_rows(&mut self, pid: u32, sampled_ns: u64) {
        match self.tables_exited.get(&pid) {
            Some(&exit_ns) if sampled_ns <= exit_ns => {}
            // Sampled after its leader exited: it lives on.
            Some(_) => {
                self.tables_exited.remove(&pid);
                self.queue_tables(pid);
            }
            None => self.queue_tables(pid),
        }
    }

    /// `--unwind tables`: a stack of `pid` was copied, so its rows lacked
    /// something (a library mapped after they were built, typically: a
    /// command's libraries are loaded after its exec); they are rebuilt
    /// from the mappings as now known, less and less often (see
    /// [`TABLES_RESEND_INTERVAL`]).
    fn resend_tables(&mut self, pid: u32, sampled_ns: u64, processes: &mut ProcessTable) {
        if self.table_candidates.is_none() {
            return;
        }
        match self.tables_sent.get(&pid) {
            // None sent yet: asked for at once.
            None => return self.ask_first_rows(pid, sampled_ns),
            // Sampled before its rows were in the kernel: they may lack nothing.
            Some(&sent_ns) if sampled_ns <= sent_ns => return,
            Some(_) => {}
        }
        let now = Instant::now();
        let wait = match self.tables_resent.get(&pid) {
            Some(&(last, wait)) if now.duration_since(last) < wait => return,
            Some(&(_, wait)) => (wait * 2).min(TABLES_RESEND_MAX),
            None => TABLES_RESEND_INTERVAL,
        };
        self.tables_resent.insert(pid, (now, wait));
        // A copy sampled after the rows were sent means the snapshot they
        // were built from lacks something: read the mappings again now, not
        // a period after the last read (a command's libc is mapped within
        // a millisecond of its exec, when its first rows may be built).
        // No address is mapped at 0. Off-CPU copies are unwound with the
        // sideband's records, which leave `/proc`'s snapshot as it was.
        processes.age_mappings(pid);
        processes.locate(pid, 0);
        self.queue_tables(pid);
    }

    /// Files whose call frame information could not be compiled:
    /// (malformed, too many rows).
    pub fn uncompilable_tables(&self) -> (usize, usize) {
        self.unwinder.uncompilable()
    }

    /// What is known of Python processes: their frames' names, their locals.
    pub fn python(&self) -> &Python {
        &self.python
    }

    pub fn python_mut(&mut self) -> &mut Python {
        &mut self.python
    }

    /// Process `pid` is to be checked for Python at the next
    /// [`Ingest::python_changes`]: it is new, or may have exec'd.
    pub fn check_python_later(&mut self, pid: u32) {
        self.python_candidates.push(pid);
        // Rows already sent are dropped when the sideband says the process
        // exec'd, and rebuilt when its stacks are copied: not sent again
        // at each housekeeping round.
        if !self.tables_sent.contains_key(&pid) && !self.tables_exited.contains_key(&pid) {
            self.queue_tables(pid);
        }
    }

    /// Python processes found (with what the sampler needs to read their
    /// frames) and gone since the last call; the candidates are checked first.
    pub fn python_changes(&mut self, processes: &mut ProcessTable) -> Vec<PythonChange> {
        for pid in std::mem::take(&mut self.python_candidates) {
            self.python.check(pid, processes);
        }
        self.python.take_changes()
    }

    /// A sample's stacks as typed frames, innermost first, and the thread's
    /// name. A copied stack is unwound with the mappings `history` says were
    /// in force when it was sampled, if it knows them, else `/proc`'s.
    pub fn unwind(
        &mut self,
        sample: Sample<'_>,
        processes: &mut ProcessTable,
        history: &MappingHistory,
    ) -> (Vec<RawFrame>, String) {
        if matches!(sample.user, UserStack::Copy { .. }) {
            self.resend_tables(sample.tgid, sample.time_ns, processes);
        }
        let user = match sample.user {
            UserStack::Copy {
                regs: (ip, sp, bp),
                stack,
            } => StackRead::Unwound(self.unwinder.unwind_at(
                (sample.tgid, sample.time_ns),
                UserRegs { ip, sp, bp },
                stack,
                processes,
                history,
            )),
            UserStack::Walked(read) => read,
            UserStack::Absent if self.collect_user => StackRead::Missing(Gap::Failed(EFAULT)),
            UserStack::Absent => StackRead::NotCollected,
        };
        let raw = combine(processes, sample.tgid, &sample.comm, sample.kernel, user);
        let raw = self
            .python
            .merge(sample.tgid, sample.tid, raw, &sample.python);
        (raw, sample.comm)
    }

    /// How much is kept, for a debug log.
    pub fn sizes(&self) -> String {
        self.unwinder.sizes()
    }

    /// Forgets what was kept for process `pid`, which has exited.
    pub fn forget(&mut self, pid: u32) {
        self.unwinder.forget(pid);
        self.tables_resent.remove(&pid);
        self.drop_tables(pid);
        self.tables_exited.remove(&pid);
        self.python.forget(pid);
    }
}

/// Both halves of a sample as typed frames, innermost first; notes the
/// process in `processes` if it is new.
fn combine(
    processes: &mut ProcessTable,
    tgid: u32,
    comm: &str,
    kernel: StackRead,
    user: StackRead,
) -> Vec<RawFrame> {
    let process = processes.observe(tgid, comm);
    let user = match user {
        // Kernel threads have no user stack; that is not a failure to show.
        StackRead::Missing(Gap::Failed(EFAULT)) if process.kernel_thread => StackRead::NotCollected,
        user => user,
    };
    let kernel = match kernel {
        // Sampled in user mode: there is no kernel stack to read.
        StackRead::Missing(Gap::Failed(EFAULT)) => StackRead::NotCollected,
        kernel => kernel,
    };
    stack::combine(kernel, user, MAX_STACK_DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::PythonFrames, stack::Space};
    use tripod_common::RecordKind;

    const UNREADABLE: StackRead = StackRead::Missing(Gap::Failed(EFAULT));

    fn sample(user: UserStack<'_>, kernel: StackRead) -> Sample<'_> {
        let pid = std::process::id();
        Sample {
            kind: RecordKind::Blocked,
            user,
            kernel,
            ..Sample::on_cpu(pid, pid, "worker")
        }
    }

    #[test]
    fn an_unreadable_kernel_stack_of_a_user_mode_sample_is_left_out() {
        let mut processes = ProcessTable::new();
        let pid = std::process::id();
        let raw = combine(
            &mut processes,
            pid,
            "t",
            UNREADABLE,
            StackRead::Addresses(vec![1, 2]),
        );
        assert_eq!(
            raw,
            [
                RawFrame::InstructionPointer(Space::User, 1),
                RawFrame::ReturnAddress(Space::User, 2)
            ]
        );
        assert!(processes.get(pid).is_some(), "the process is noted");
    }

    #[test]
    fn a_missing_user_stack_of_a_user_process_is_shown() {
        let mut ingest = Ingest::new(Python::new(PythonFrames::Off), true);
        let mut processes = ProcessTable::new();
        let history = MappingHistory::new(crate::mappings::Scope::All);
        let kernel = StackRead::Addresses(vec![0xffff_8000_0000_0010]);
        let (raw, comm) =
            ingest.unwind(sample(UserStack::Absent, kernel), &mut processes, &history);
        assert_eq!(comm, "worker");
        assert_eq!(
            raw,
            [
                RawFrame::InstructionPointer(Space::Kernel, 0xffff_8000_0000_0010),
                RawFrame::Gap(Space::User, Gap::Failed(EFAULT))
            ]
        );
        // `--kernel-only`: not collected, so nothing to show.
        let mut kernel_only = Ingest::new(Python::new(PythonFrames::Off), false);
        let absent = sample(UserStack::Absent, UNREADABLE);
        let (raw, _) = kernel_only.unwind(absent, &mut processes, &history);
        assert!(raw.is_empty());
    }

    /// The pids whose rows [`Ingest::table_changes`] hands over now,
    /// confirmed as loaded at `now_ns`.
    fn tables_sent_now(ingest: &mut Ingest, processes: &mut ProcessTable, now_ns: u64) -> Vec<u32> {
        let pids: Vec<u32> = ingest
            .table_changes(processes)
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        ingest.tables_handed(pids.iter().copied(), now_ns);
        pids
    }

    fn tables_ingest() -> Ingest {
        let mut ingest = Ingest::new(Python::new(PythonFrames::Off), true);
        ingest.compile_tables();
        ingest
    }

    #[test]
    fn a_copied_stack_asks_for_its_rows_once() {
        let mut ingest = tables_ingest();
        let mut processes = ProcessTable::new();
        let pid = std::process::id();
        ingest.copied_stack_arrived(pid, 500, &mut processes);
        ingest.copied_stack_arrived(pid, 500, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 1_000), [pid]);
        // Sent: neither another copy nor a housekeeping round sends them again.
        ingest.copied_stack_arrived(pid, 500, &mut processes);
        ingest.check_python_later(pid);
        assert!(tables_sent_now(&mut ingest, &mut processes, 2_000).is_empty());
    }

    #[test]
    fn stacks_copied_before_the_rows_were_loaded_do_not_rebuild_them() {
        let mut ingest = tables_ingest();
        let mut processes = ProcessTable::new();
        let history = MappingHistory::new(crate::mappings::Scope::All);
        let pid = std::process::id();
        let copied_at = |time_ns| Sample {
            time_ns,
            user: UserStack::Copy {
                regs: (0, 0, 0),
                stack: &[],
            },
            ..Sample::on_cpu(pid, pid, "worker")
        };
        // The first copy asks for the rows.
        ingest.unwind(copied_at(500), &mut processes, &history);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 1_000), [pid]);
        // A copy sampled while they were sent lacks nothing.
        ingest.unwind(copied_at(900), &mut processes, &history);
        assert!(tables_sent_now(&mut ingest, &mut processes, 2_000).is_empty());
        // One sampled after they were loaded: something is missing.
        ingest.unwind(copied_at(1_500), &mut processes, &history);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 3_000), [pid]);
    }

    #[test]
    fn a_copy_sampled_after_the_rows_were_sent_rebuilds_them_as_it_arrives() {
        let mut ingest = tables_ingest();
        let mut processes = ProcessTable::new();
        let pid = std::process::id();
        ingest.copied_stack_arrived(pid, 500, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 1_000), [pid]);
        // Sampled while they were sent: nothing.
        ingest.copied_stack_arrived(pid, 900, &mut processes);
        assert!(tables_sent_now(&mut ingest, &mut processes, 2_000).is_empty());
        // Sampled after: rebuilt before it is unwound...
        ingest.copied_stack_arrived(pid, 1_500, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 3_000), [pid]);
        // ...and not again when it is, within the wait...
        ingest.copied_stack_arrived(pid, 3_500, &mut processes);
        assert!(tables_sent_now(&mut ingest, &mut processes, 4_000).is_empty());
        // ...unless the process mapped code since.
        ingest.tables_mapped(pid);
        ingest.copied_stack_arrived(pid, 4_500, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 5_000), [pid]);
    }

    /// Our own process's rows asked for at 500 and sent at 1,000; its
    /// leader's exit at 1,500 made them go.
    fn rows_sent_then_leader_exited() -> (Ingest, ProcessTable, u32) {
        let mut ingest = tables_ingest();
        let mut processes = ProcessTable::new();
        let pid = std::process::id();
        ingest.copied_stack_arrived(pid, 500, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 1_000), [pid]);
        ingest.tables_exited(pid, 1_500);
        assert_eq!(ingest.tables_gone(), [pid]);
        (ingest, processes, pid)
    }

    #[test]
    fn an_exited_process_gets_no_rows_for_earlier_samples_until_forgotten() {
        let (mut ingest, mut processes, pid) = rows_sent_then_leader_exited();
        // Samples taken before the exit still arrive; no rows for them.
        ingest.copied_stack_arrived(pid, 1_400, &mut processes);
        ingest.check_python_later(pid);
        assert!(tables_sent_now(&mut ingest, &mut processes, 2_000).is_empty());
        // Retired: the pid may be another process's.
        ingest.forget(pid);
        ingest.copied_stack_arrived(pid, 1_400, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 3_000), [pid]);
    }

    #[test]
    fn a_process_that_lives_on_without_its_leader_gets_its_rows_again() {
        let (mut ingest, mut processes, pid) = rows_sent_then_leader_exited();
        ingest.copied_stack_arrived(pid, 1_600, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 2_000), [pid]);
    }

    #[test]
    fn an_exec_drops_the_rows_and_the_next_copy_asks_again() {
        let mut ingest = tables_ingest();
        let mut processes = ProcessTable::new();
        let pid = std::process::id();
        ingest.copied_stack_arrived(pid, 500, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 1_000), [pid]);
        ingest.drop_tables(pid);
        assert_eq!(ingest.tables_gone(), [pid]);
        ingest.copied_stack_arrived(pid, 500, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 2_000), [pid]);
    }

    #[test]
    fn rows_sent_after_an_exec_are_kept_when_its_record_comes() {
        let mut ingest = tables_ingest();
        let mut processes = ProcessTable::new();
        let pid = std::process::id();
        ingest.copied_stack_arrived(pid, 500, &mut processes);
        assert_eq!(tables_sent_now(&mut ingest, &mut processes, 1_000), [pid]);
        // The exec's record arrives after rows read from the new image.
        ingest.tables_exec(pid, 900);
        assert!(ingest.tables_gone().is_empty());
        // An exec after they were sent: they describe the old image.
        ingest.tables_exec(pid, 1_100);
        assert_eq!(ingest.tables_gone(), [pid]);
    }

    #[test]
    fn kernel_walked_user_addresses_are_kept_as_sampled() {
        let mut ingest = Ingest::new(Python::new(PythonFrames::Merged), true);
        let mut processes = ProcessTable::new();
        let history = MappingHistory::new(crate::mappings::Scope::All);
        let user = UserStack::Walked(StackRead::Addresses(vec![0x1000, 0x2000]));
        let walked = sample(user, StackRead::NotCollected);
        let (raw, _) = ingest.unwind(walked, &mut processes, &history);
        assert_eq!(
            raw,
            [
                RawFrame::InstructionPointer(Space::User, 0x1000),
                RawFrame::ReturnAddress(Space::User, 0x2000)
            ]
        );
    }
}
