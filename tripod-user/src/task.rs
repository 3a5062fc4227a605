//! The scheduler state of a thread when its stack was taken.

/// What a thread was doing when its stack was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    /// On a CPU: every cpu-mode sample, and dumps of runnable threads.
    Running,
    /// Ready to run but switched out (preempted or yielded).
    Runnable,
    /// Interruptible sleep (`S`): a signal ends the wait.
    Sleeping,
    /// Uninterruptible sleep (`D`), usually I/O.
    Uninterruptible,
    /// A kernel thread idling or parked (`I`).
    Idle,
    /// Stopped by a signal, or frozen (`T`).
    Stopped,
    /// Stopped by a tracer (`t`).
    Traced,
    /// Exiting or a zombie (`X`, `Z`).
    Dead,
    /// A state word that could not be decoded.
    Unknown,
}

// Bits of `task_struct.__state` (and of `exit_state` for EXIT_*), from
// include/linux/sched.h. TASK_WAKEKILL (0x100) and TASK_FREEZABLE (0x2000)
// only qualify the state they come with, so decoding ignores them.
const TASK_INTERRUPTIBLE: u32 = 0x1;
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
const TASK_STOPPED: u32 = 0x4;
const TASK_TRACED: u32 = 0x8;
const EXIT_DEAD: u32 = 0x10;
const EXIT_ZOMBIE: u32 = 0x20;
const TASK_PARKED: u32 = 0x40;
const TASK_DEAD: u32 = 0x80;
const TASK_WAKING: u32 = 0x200;
const TASK_NOLOAD: u32 = 0x400;
const TASK_NEW: u32 = 0x800;
const TASK_RTLOCK_WAIT: u32 = 0x1000;
const TASK_FROZEN: u32 = 0x8000;
/// The first bit the kernel does not define.
const TASK_STATE_MAX: u32 = 0x10000;
const TASK_IDLE: u32 = TASK_UNINTERRUPTIBLE | TASK_NOLOAD;
/// The bits `/proc` reports (the kernel's TASK_REPORT), plus TASK_DEAD,
/// which the kernel leaves to `exit_state` but is all a `__state` word has.
const REPORTED: u32 = TASK_INTERRUPTIBLE
    | TASK_UNINTERRUPTIBLE
    | TASK_STOPPED
    | TASK_TRACED
    | EXIT_DEAD
    | EXIT_ZOMBIE
    | TASK_PARKED
    | TASK_DEAD;

impl TaskState {
    /// Every state, in declaration order.
    pub const ALL: [TaskState; 9] = [
        TaskState::Running,
        TaskState::Runnable,
        TaskState::Sleeping,
        TaskState::Uninterruptible,
        TaskState::Idle,
        TaskState::Stopped,
        TaskState::Traced,
        TaskState::Dead,
        TaskState::Unknown,
    ];

    /// Decodes a raw `task_struct.__state` word of Linux 6.x. The raw
    /// `sched_switch` tracepoint (`tp_btf`, `raw_tp`) passes this word as
    /// `prev_state`; the classic tracepoint's `prev_state` is already reduced
    /// to one bit per `/proc` state, with 0x80 for idle and 0x100 for
    /// preempted, and must not be decoded with this.
    ///
    /// A word of 0 is [`TaskState::Running`]: the word alone cannot tell a
    /// thread on a CPU from a preempted one.
    pub fn from_kernel(state: u32) -> TaskState {
        // The precedence of the kernel's __task_state_index(), which /proc and
        // ps use:
        // 1. RTLOCK_WAIT and FROZEN replace the whole word (the real state
        //    waits in saved_state), so they win. The kernel shows both as D;
        //    a frozen task is not waiting for I/O, so it is Stopped here.
        // 2. TASK_IDLE (UNINTERRUPTIBLE|NOLOAD) beats the D it contains.
        // 3. Else the highest reported bit wins (the kernel's fls()).
        // 4. No reported bit is R. WAKING and NEW tasks are not on a CPU
        //    yet, so they are Runnable; a qualifier alone is no state.
        if state >= TASK_STATE_MAX {
            return TaskState::Unknown;
        }
        if state & TASK_RTLOCK_WAIT != 0 {
            return TaskState::Uninterruptible;
        }
        if state & TASK_FROZEN != 0 {
            return TaskState::Stopped;
        }
        if state & TASK_IDLE == TASK_IDLE {
            return TaskState::Idle;
        }
        let reported = state & REPORTED;
        if reported != 0 {
            return match 1 << reported.ilog2() {
                TASK_DEAD | EXIT_ZOMBIE | EXIT_DEAD => TaskState::Dead,
                TASK_PARKED => TaskState::Idle,
                TASK_TRACED => TaskState::Traced,
                TASK_STOPPED => TaskState::Stopped,
                TASK_UNINTERRUPTIBLE => TaskState::Uninterruptible,
                _ => TaskState::Sleeping,
            };
        }
        if state == 0 {
            TaskState::Running
        } else if state & (TASK_WAKING | TASK_NEW) != 0 {
            TaskState::Runnable
        } else {
            TaskState::Unknown
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Runnable => "runnable",
            TaskState::Sleeping => "sleeping",
            TaskState::Uninterruptible => "uninterruptible",
            TaskState::Idle => "idle",
            TaskState::Stopped => "stopped",
            TaskState::Traced => "traced",
            TaskState::Dead => "dead",
            TaskState::Unknown => "unknown",
        }
    }

    /// The state with this [`name`](TaskState::name).
    pub fn from_name(name: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The letter `ps` and `/proc/PID/stat` show (`?` for unknown).
    pub fn letter(self) -> char {
        match self {
            TaskState::Running | TaskState::Runnable => 'R',
            TaskState::Sleeping => 'S',
            TaskState::Uninterruptible => 'D',
            TaskState::Idle => 'I',
            TaskState::Stopped => 'T',
            TaskState::Traced => 't',
            TaskState::Dead => 'X',
            TaskState::Unknown => '?',
        }
    }

    /// True when the thread is off the CPU waiting for something other than a CPU.
    pub fn is_waiting(self) -> bool {
        !matches!(
            self,
            TaskState::Running | TaskState::Runnable | TaskState::Unknown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::{self, *};

    #[test]
    fn decodes_plain_states() {
        for (word, state) in [
            (0x0, Running),
            (0x1, Sleeping),
            (0x2, Uninterruptible),
            (0x4, Stopped),
            (0x8, Traced),
            (0x10, Dead),
            (0x20, Dead),
            (0x40, Idle),
            (0x80, Dead),
            (0x200, Runnable),
            (0x800, Runnable),
            (0x1000, Uninterruptible),
            (0x8000, Stopped),
        ] {
            assert_eq!(TaskState::from_kernel(word), state, "{word:#x}");
        }
    }

    #[test]
    fn decodes_combinations() {
        for (word, state, what) in [
            (0x402, Idle, "TASK_IDLE"),
            (0x403, Idle, "TASK_IDLE beats the D and S it contains"),
            (0x401, Sleeping, "NOLOAD without UNINTERRUPTIBLE is no idle"),
            (0x102, Uninterruptible, "TASK_KILLABLE"),
            (0x104, Stopped, "TASK_STOPPED"),
            (0x2001, Sleeping, "freezable interruptible sleep"),
            (0x2102, Uninterruptible, "freezable killable sleep"),
            (0x2402, Idle, "freezable idle"),
            (0x1001, Uninterruptible, "RTLOCK_WAIT beats everything"),
            (0x1402, Uninterruptible, "RTLOCK_WAIT beats TASK_IDLE"),
            (0x8402, Stopped, "FROZEN beats TASK_IDLE"),
            (0x0c, Traced, "the highest reported bit wins"),
            (0x03, Uninterruptible, "D beats S"),
            (0x48, Idle, "parked beats traced"),
            (0x30, Dead, "zombie and dead"),
            (0x201, Sleeping, "WAKING does not hide a sleep"),
        ] {
            assert_eq!(TaskState::from_kernel(word), state, "{word:#x}: {what}");
        }
    }

    #[test]
    fn undecodable_words_are_unknown() {
        for word in [0x100, 0x400, 0x2000, 0x10000, 0x10001, u32::MAX] {
            assert_eq!(TaskState::from_kernel(word), Unknown, "{word:#x}");
        }
    }

    #[test]
    fn names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::from_name(state.name()), Some(state));
        }
        assert_eq!(TaskState::from_name("waiting"), None);
        assert_eq!(TaskState::from_name("Running"), None);
    }

    #[test]
    fn letters_match_ps() {
        let letters: String = TaskState::ALL.into_iter().map(TaskState::letter).collect();
        assert_eq!(letters, "RRSDITtX?");
    }

    #[test]
    fn waiting_excludes_cpu_states_and_unknown() {
        let waiting: Vec<_> = TaskState::ALL
            .into_iter()
            .filter(|s| s.is_waiting())
            .collect();
        assert_eq!(
            waiting,
            [Sleeping, Uninterruptible, Idle, Stopped, Traced, Dead]
        );
    }
}
