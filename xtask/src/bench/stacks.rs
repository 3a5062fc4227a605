//! Every sampler's output as folded stacks (`comm;outer;…;inner count`), and the stack
//! measures computed from them: how often a known chain is complete, and how samples split.

use std::collections::HashMap;

/// Folded stacks, merged: identical lines add up.
#[derive(Debug, Default)]
pub struct Folded {
    /// Frames (the comm first, innermost frame last) and their sample count.
    pub stacks: HashMap<Vec<String>, u64>,
}

impl Folded {
    /// Parses `a;b;c N` lines; anything without a trailing count is ignored.
    pub fn parse(text: &str) -> Folded {
        let mut folded = Folded::default();
        for line in text.lines() {
            let Some((frames, count)) = line.trim_end().rsplit_once(' ') else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            folded.add(frames.split(';').map(str::to_owned).collect(), count);
        }
        folded
    }

    /// Converts bpftrace's printout of `@[comm, kstack, ustack] = count()` to folded form.
    ///
    /// Each entry reads `@[comm, ` + kernel frames + `, ` + user frames + `]: N`, frames one
    /// per line, innermost first, each as `symbol+offset`.
    pub fn from_bpftrace(text: &str) -> Folded {
        let mut folded = Folded::default();
        let mut entry: Option<(String, Vec<Vec<String>>)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("@[") {
                // `comm, , ` (empty kernel stack) or `comm, `: the comm, then stack parts.
                let mut parts = rest.split(", ");
                let comm = parts.next().unwrap_or_default().to_owned();
                let mut stacks = vec![Vec::new()];
                stacks.extend(parts.skip(1).filter(|p| p.is_empty()).map(|_| Vec::new()));
                entry = Some((comm, stacks));
                continue;
            }
            let Some((_, stacks)) = entry.as_mut() else {
                continue;
            };
            let mut trimmed = line.trim();
            // `,` starts the next stack; `, ]: N` is an empty last stack and the count.
            if let Some(rest) = trimmed.strip_prefix(',') {
                stacks.push(Vec::new());
                trimmed = rest.trim();
            }
            if let Some(count) = trimmed.strip_prefix("]: ") {
                let (comm, stacks) = entry.take().expect("inside an entry");
                let count = count.parse().unwrap_or(0);
                let mut frames = vec![comm];
                // Kernel stack first in the key, but it is the innermost part of the stack.
                let (kernel, user) = match stacks.as_slice() {
                    [kernel, user, ..] => (kernel.clone(), user.clone()),
                    [only] => (Vec::new(), only.clone()),
                    [] => (Vec::new(), Vec::new()),
                };
                frames.extend(user.into_iter().rev());
                frames.extend(kernel.into_iter().rev().map(|f| format!("{f}_[k]")));
                folded.add(frames, count);
            } else if !trimmed.is_empty() {
                let frame = trimmed.rsplit_once('+').map_or(trimmed, |(name, _)| name);
                stacks.last_mut().expect("one stack").push(frame.to_owned());
            }
        }
        folded
    }

    /// Converts bcc offcputime's default printout to folded form.
    ///
    /// Each entry is its frames one per line, innermost first (kernel, then user, with `--`
    /// between them under `-d`), then `-  comm (tid)`, then its microseconds, all indented;
    /// anything else is its header. Python 3 bcc prints names as bytes: `b'read'`.
    pub fn from_offcputime(text: &str) -> Folded {
        let mut folded = Folded::default();
        let mut frames = Vec::new();
        let mut comm = None;
        for line in text.lines().filter(|l| l.starts_with("    ")) {
            let line = line.trim();
            if let Some(thread) = line.strip_prefix("- ") {
                let thread = thread.trim();
                let name = thread.rsplit_once(" (").map_or(thread, |(name, _)| name);
                comm = Some(unquote_bytes(name).to_owned());
            } else if let Some(comm) = comm.take() {
                let mut stack = vec![comm];
                stack.extend(frames.drain(..).rev());
                folded.add(stack, line.parse().unwrap_or(0));
            } else if line != "--" {
                frames.push(unquote_bytes(line).to_owned());
            }
        }
        folded
    }

    fn add(&mut self, frames: Vec<String>, count: u64) {
        *self.stacks.entry(frames).or_default() += count;
    }

    /// The stacks of processes whose comm is `comm`.
    pub fn of_comm<'a>(&'a self, comm: &'a str) -> impl Iterator<Item = (&'a [String], u64)> {
        self.stacks
            .iter()
            .filter(move |(frames, _)| frames.first().is_some_and(|c| c == comm))
            .map(|(frames, count)| (&frames[1..], *count))
    }

    pub fn samples(&self) -> u64 {
        self.stacks.values().sum()
    }

    /// Samples of `comm`, and how many of them contain `chain` contiguously, in order.
    pub fn chain_share(&self, comm: &str, chain: &[&str]) -> Share {
        let mut share = Share::default();
        for (frames, count) in self.of_comm(comm) {
            share.of += count;
            let names: Vec<&str> = frames.iter().map(|f| frame_name(f)).collect();
            if names.windows(chain.len()).any(|w| w == chain) {
                share.hits += count;
            }
        }
        share
    }

    /// The samples of `comm` that have a user frame, sorted by how they show `chain`: see
    /// [`ChainBreakdown`]. Samples with kernel frames only (exec, exit, page faults before
    /// the first user instruction) are left out: no user stack can show the chain there.
    pub fn chain_breakdown(&self, comm: &str, chain: &[&str]) -> ChainBreakdown {
        let mut breakdown = ChainBreakdown::default();
        let leaf = chain.last().copied();
        for (frames, count) in self.of_comm(comm) {
            let user: Vec<&str> = user_frames(frames).collect();
            let slot = if user.is_empty() {
                continue;
            } else if holds_chain(frames, chain) {
                &mut breakdown.complete
            } else if frames.iter().any(|f| in_exec_or_exit(f)) {
                &mut breakdown.exec_exit
            } else if ran_outside_chain(&user, chain) {
                &mut breakdown.elsewhere
            } else if user.iter().any(|f| f.starts_with('[')) {
                &mut breakdown.unnamed
            } else if leaf.is_some_and(|leaf| user.contains(&leaf)) {
                &mut breakdown.broken
            } else {
                &mut breakdown.elsewhere
            };
            *slot += count;
        }
        breakdown
    }

    /// Samples of `comm`, and how many of them name every frame of their user stack (none
    /// `[unknown]`, `[truncated]`, `[missing…]` or a bare `[module]`); at least one user frame.
    pub fn named_share(&self, comm: &str) -> Share {
        let mut share = Share::default();
        for (frames, count) in self.of_comm(comm) {
            share.of += count;
            let mut user = frames.iter().filter(|f| !f.ends_with("_[k]")).peekable();
            if user.peek().is_some() && user.all(|f| !f.starts_with('[')) {
                share.hits += count;
            }
        }
        share
    }

    /// All samples, and how many of them contain `chain` contiguously, in order, among their
    /// Python frames (native frames in between do not break it).
    pub fn python_chain_share(&self, chain: &[&str]) -> Share {
        let mut share = Share::default();
        for (frames, count) in &self.stacks {
            share.of += count;
            let names: Vec<&str> = frames.iter().filter_map(|f| python_frame_name(f)).collect();
            if names.windows(chain.len()).any(|w| w == chain) {
                share.hits += count;
            }
        }
        share
    }

    /// Samples of `comm` in `first`, out of those in `first` or `second`.
    pub fn split(&self, comm: &str, first: &str, second: &str) -> Share {
        let mut share = Share::default();
        for (frames, count) in self.of_comm(comm) {
            let has = |name: &str| frames.iter().any(|f| frame_name(f) == name);
            if has(first) {
                share.hits += count;
                share.of += count;
            } else if has(second) {
                share.of += count;
            }
        }
        share
    }

    /// Distinct stacks of `comm` (user and kernel parts together).
    pub fn distinct(&self, comm: &str) -> usize {
        self.of_comm(comm).count()
    }
}

/// Whether a folded frame is a kernel one (`_[k]`, as stackcollapse-perf.pl marks them).
pub fn is_kernel(frame: &str) -> bool {
    frame.ends_with("_[k]")
}

fn user_frames(frames: &[String]) -> impl Iterator<Item = &str> {
    frames.iter().map(String::as_str).filter(|f| !is_kernel(f))
}

/// Whether a folded frame is the kernel's execve or exit path (`__x64_sys_execve`,
/// `bprm_execve`, `do_exit`, ...).
fn in_exec_or_exit(frame: &str) -> bool {
    frame
        .strip_suffix("_[k]")
        .is_some_and(|name| name.contains("execve") || name == "do_exit")
}

/// Whether a stack's innermost user frame is a named function outside `chain`, and the
/// chain's innermost function is not on the stack: the sample was taken outside the
/// chain's work (in ld.so's start-up, say), whatever the unwinder made of its callers.
/// An unnamed innermost frame might have been in the chain, so it never counts here.
fn ran_outside_chain(user: &[&str], chain: &[&str]) -> bool {
    let Some(innermost) = user.last() else {
        return false;
    };
    !innermost.starts_with('[')
        && !chain.contains(innermost)
        && chain.last().is_none_or(|leaf| !user.contains(leaf))
}

/// Whether the user frames of a stack hold `chain` contiguously, outermost first.
pub fn holds_chain(frames: &[String], chain: &[&str]) -> bool {
    let user: Vec<&str> = user_frames(frames).collect();
    user.windows(chain.len()).any(|w| w == chain)
}

/// `name` from Python's printout of bytes, `b'name'`; anything else as it is.
fn unquote_bytes(text: &str) -> &str {
    text.strip_prefix("b'")
        .and_then(|t| t.strip_suffix('\''))
        .unwrap_or(text)
}

/// A frame's function name: without the `_[k]` kernel mark some folded producers add.
fn frame_name(frame: &str) -> &str {
    frame.strip_suffix("_[k]").unwrap_or(frame)
}

/// The function of a Python frame, which py-spy and tripod-bpf both write as
/// `name (file:line)`; None for a native frame, which has no ` (file…)` part.
fn python_frame_name(frame: &str) -> Option<&str> {
    let (name, _) = frame.strip_suffix(')')?.split_once(" (")?;
    Some(name)
}

/// `hits` out of `of` samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Share {
    pub hits: u64,
    pub of: u64,
}

impl Share {
    pub fn percent(&self) -> Option<f64> {
        (self.of > 0).then(|| 100.0 * self.hits as f64 / self.of as f64)
    }
}

/// The samples of a process that have a user frame, by how their stack shows a known
/// chain; each sample counts in the first field that applies, in this order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ChainBreakdown {
    /// The whole chain, contiguous and in order, among the user frames.
    pub complete: u64,
    /// In the kernel's execve or exit path, where the user stack is being replaced or torn
    /// down: samplers differ in whether they give such a sample a user frame at all.
    pub exec_exit: u64,
    /// Not complete, not elsewhere, and some user frame is not a function: `[unknown]`,
    /// `[truncated]`, `[missing…]` or a bare `[module]`.
    pub unnamed: u64,
    /// Every user frame named and the chain's innermost function on the stack, but not the
    /// whole chain: frames lost or made up by the unwinder.
    pub broken: u64,
    /// The process was elsewhere (the dynamic loader, libc start-up, main's own calls,
    /// exit): the chain's innermost function is absent and either every user frame is
    /// named or the innermost one is a named function outside the chain.
    pub elsewhere: u64,
}

impl ChainBreakdown {
    pub fn samples(&self) -> u64 {
        self.complete + self.exec_exit + self.unnamed + self.broken + self.elsewhere
    }

    /// The complete ones out of all.
    pub fn share(&self) -> Share {
        Share {
            hits: self.complete,
            of: self.samples(),
        }
    }

    /// The complete ones out of the samples taken in the chain's work, or that might have
    /// been (complete, unnamed, broken): how well the sampler names the work itself, apart
    /// from how much of the process's life the work is.
    pub fn share_of_work(&self) -> Share {
        Share {
            hits: self.complete,
            of: self.complete + self.unnamed + self.broken,
        }
    }

    /// The sum of two breakdowns (rounds pooled).
    pub fn add(&self, other: &ChainBreakdown) -> ChainBreakdown {
        ChainBreakdown {
            complete: self.complete + other.complete,
            exec_exit: self.exec_exit + other.exec_exit,
            unnamed: self.unnamed + other.unnamed,
            broken: self.broken + other.broken,
            elsewhere: self.elsewhere + other.elsewhere,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fixtures::WORK_CHAIN;

    const BPFTRACE: &str = "Attaching 1 probe...\n\n\n\
@[work_fp, \n    asm_sysvec_apic_timer_interrupt+26\n, \n    spin+31\n    gamma+27\n    main+407\n]: 2\n\
@[work_fp, , \n    spin+45\n    gamma+27\n    main+407\n]: 143\n\
@[swapper/0, \n    default_idle+5\n    do_idle+310\n, ]: 7\n";

    #[test]
    fn converts_bpftrace_maps_with_and_without_kernel_frames() {
        let folded = Folded::from_bpftrace(BPFTRACE);
        let line = |s: &str| s.split(';').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            folded.stacks[&line("work_fp;main;gamma;spin;asm_sysvec_apic_timer_interrupt_[k]")],
            2
        );
        assert_eq!(folded.stacks[&line("work_fp;main;gamma;spin")], 143);
        assert_eq!(
            folded.stacks[&line("swapper/0;do_idle_[k];default_idle_[k]")],
            7
        );
        assert_eq!(folded.samples(), 152);
    }

    #[test]
    fn named_share_counts_stacks_whose_every_user_frame_is_named() {
        let folded = Folded::parse(
            "churn;_start;main;work;irq_[k] 5\n\
             churn;[truncated];_exit;do_exit_[k] 3\n\
             churn;main;[libc.so.6] 2\n\
             churn;do_exit_[k] 1\n\
             other;main 7\n",
        );
        let share = folded.named_share("churn");
        assert_eq!((share.hits, share.of), (5, 11));
    }

    // Indentation matters in this format, hence a raw string.
    const OFFCPUTIME: &str = r"Tracing off-CPU time (us) of PID 4242 by user + kernel stack... Hit Ctrl-C to end.

    b'finish_task_switch.isra.0'
    b'schedule'
    b'pipe_read'
    b'read'
    b'wait_for_ball'
    b'ping'
    -                pingpong (4242)
        1500

    finish_task_switch
    --
    nanosleep
    -                other name (4243)
        20

";

    #[test]
    fn converts_offcputime_printouts_with_and_without_bytes_quoting() {
        let folded = Folded::from_offcputime(OFFCPUTIME);
        let line = |s: &str| s.split(';').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            folded.stacks[&line(
                "pingpong;ping;wait_for_ball;read;pipe_read;schedule;finish_task_switch.isra.0"
            )],
            1500
        );
        assert_eq!(
            folded.stacks[&line("other name;nanosleep;finish_task_switch")],
            20
        );
        assert_eq!(folded.samples(), 1520);
    }

    #[test]
    fn chain_must_be_contiguous_and_in_order() {
        let folded = Folded::parse(
            "work_fp;main;alpha;beta;gamma;spin 90\n\
             work_fp;main;alpha;beta;gamma;spin;irq_[k] 5\n\
             work_fp;main;beta;gamma;spin 4\n\
             other;main;alpha;beta;gamma;spin 50\n\
             not a folded line\n",
        );
        let chain = ["main", "alpha", "beta", "gamma", "spin"];
        assert_eq!(
            folded.chain_share("work_fp", &chain),
            Share { hits: 95, of: 99 }
        );
        assert_eq!(folded.chain_share("missing", &chain).percent(), None);
    }

    #[test]
    fn chain_breakdown_sorts_user_stacks_by_the_first_rule_that_applies() {
        let folded = Folded::parse(
            "chain_nofp;_start;__libc_start_main;main;alpha;beta;gamma;spin 80\n\
             chain_nofp;main;alpha;beta;gamma;spin;fixture_done;irq_[k] 4\n\
             chain_nofp;[unknown];beta;gamma;spin 3\n\
             chain_nofp;[truncated];_dl_relocate_object 2\n\
             chain_nofp;[unknown];intel_check_word 4\n\
             chain_nofp;[unknown] 2\n\
             chain_nofp;main;beta;gamma;spin 5\n\
             chain_nofp;main;alpha;gamma;beta;spin 1\n\
             chain_nofp;_dl_start;_dl_sysdep_start 6\n\
             chain_nofp;main;fixture_setup;setitimer;hrtimer_[k] 2\n\
             chain_nofp;execve_[k];do_exit_[k] 9\n\
             chain_nofp;[truncated];__GI__exit;x64_sys_call_[k];do_exit_[k];exit_mmap_[k] 7\n\
             chain_nofp;[truncated];[unknown];__x64_sys_execve_[k];load_elf_binary_[k] 3\n\
             other;main;alpha;beta;gamma;spin 50\n",
        );
        let breakdown = folded.chain_breakdown("chain_nofp", WORK_CHAIN);
        assert_eq!(
            breakdown,
            ChainBreakdown {
                complete: 84,
                exec_exit: 10,
                unnamed: 5,
                broken: 6,
                elsewhere: 14,
            }
        );
        // Kernel-only samples count nowhere, not even in the total.
        assert_eq!(breakdown.share(), Share { hits: 84, of: 119 });
        // A named innermost frame outside the chain is elsewhere even under an unnamed
        // caller; an unnamed one might have been the work, so it counts against it.
        assert_eq!(breakdown.share_of_work(), Share { hits: 84, of: 95 });
        assert_eq!(breakdown.add(&breakdown).samples(), 238);
        assert_eq!(
            folded
                .chain_breakdown("missing", WORK_CHAIN)
                .share()
                .percent(),
            None
        );
    }

    #[test]
    fn the_chain_must_run_from_caller_to_callee() {
        // The same functions the other way round are frames put in the wrong places.
        let folded =
            Folded::parse("c;main;alpha;beta;gamma;spin 1\nc;spin;gamma;beta;alpha;main 1\n");
        let breakdown = folded.chain_breakdown("c", WORK_CHAIN);
        assert_eq!((breakdown.complete, breakdown.broken), (1, 1));
    }

    #[test]
    fn python_chain_counts_python_frames_only() {
        let folded = Folded::parse(
            "<module> (hot.py:51);main (hot.py:44);outer_step (hot.py:32);inner_loop (hot.py:27) 60\n\
             python3.11;_start;main;<module> (/b/hot.py:51);main (/b/hot.py:44);outer_step (/b/hot.py:32);\
             _PyEval_EvalFrameDefault;inner_loop (/b/hot.py:26);PyNumber_Remainder 30\n\
             python3.11;_start;main;outer_step (/b/hot.py:32);inner_loop (/b/hot.py:26) 7\n\
             python3.11;_start;main;_PyEval_EvalFrameDefault 3\n",
        );
        let chain = ["main", "outer_step", "inner_loop"];
        // The native `main` of the interpreter does not stand in for the Python one.
        assert_eq!(
            folded.python_chain_share(&chain),
            Share { hits: 90, of: 100 }
        );
    }

    #[test]
    fn split_counts_only_samples_in_either_function() {
        let folded = Folded::parse(
            "split;main;heavy 30\nsplit;main;light 10\nsplit;main 5\nsplit;main;heavy;x_[k] 0\n",
        );
        let share = folded.split("split", "heavy", "light");
        assert_eq!(share, Share { hits: 30, of: 40 });
        assert_eq!(share.percent(), Some(75.0));
        assert_eq!(folded.distinct("split"), 4);
    }
}
