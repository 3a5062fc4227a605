//! Annotation rules: a one-line description of what a thread is doing
//! ("waiting on a condition variable"), from the functions on its stack and
//! its [`TaskState`]. Rules are tried in order and the first match wins; rules
//! from the user's file come before the built-in ones.
use std::{borrow::Cow, path::Path, sync::Arc};

use serde::Deserialize;
use toml::Spanned;

use crate::{error::UsageError, model::Frame, task::TaskState};

/// Which threads a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StateFilter {
    Is(TaskState),
    /// Any state that [`TaskState::is_waiting`].
    Waiting,
}

impl StateFilter {
    fn from_name(name: &str) -> Option<StateFilter> {
        match name {
            "waiting" => Some(StateFilter::Waiting),
            _ => TaskState::from_name(name).map(StateFilter::Is),
        }
    }

    fn matches(self, state: TaskState) -> bool {
        match self {
            StateFilter::Is(wanted) => state == wanted,
            StateFilter::Waiting => state.is_waiting(),
        }
    }
}

/// The stack a rule asks for.
#[derive(Clone, Debug)]
enum FramePatterns {
    /// Any stack: the rule is on the state alone.
    Any,
    /// Patterns innermost first, each matching a frame further out than the
    /// one before (the rules from a file).
    Sequence(Vec<String>),
    /// A frame matching any of these patterns (the built-in rules).
    OneOf(&'static [&'static str]),
}

#[derive(Clone, Debug)]
struct Rule {
    description: Cow<'static, str>,
    frames: FramePatterns,
    state: Option<StateFilter>,
}

impl Rule {
    /// `names` are innermost first, each with its [`normalize`]d form.
    fn matches(&self, names: &[(&str, &str)], state: TaskState) -> bool {
        if self.state.is_some_and(|filter| !filter.matches(state)) {
            return false;
        }
        match &self.frames {
            FramePatterns::Any => true,
            FramePatterns::Sequence(patterns) => {
                // `any` consumes the frames up to the match, so each pattern
                // looks only further out than the previous one's frame.
                let mut outwards = names.iter();
                patterns
                    .iter()
                    .all(|pattern| outwards.any(|&name| pattern_matches(pattern, name)))
            }
            FramePatterns::OneOf(patterns) => names.iter().any(|&name| {
                patterns
                    .iter()
                    .any(|pattern| pattern_matches(pattern, name))
            }),
        }
    }
}

/// The built-in rules in the order they are tried: description, frame
/// patterns (any one of them; none means any stack), state. Patterns are
/// written in the [`normalize`]d form, which also covers glibc's
/// `__GI___`/`__libc_` aliases and the kernel's `.isra.0`-style clones.
const BUILTIN: [(&str, &[&str], Option<StateFilter>); 15] = [
    (
        "running on CPU",
        &[],
        Some(StateFilter::Is(TaskState::Running)),
    ),
    (
        "waiting for a CPU (preempted)",
        &[],
        Some(StateFilter::Is(TaskState::Runnable)),
    ),
    (
        "waiting on a condition variable",
        &[
            "pthread_cond_wait*",
            "pthread_cond_timedwait*",
            "pthread_cond_clockwait*",
            "cnd_wait",
            "cnd_timedwait",
        ],
        None,
    ),
    (
        "waiting for a thread to exit",
        &[
            "pthread_join*",
            "pthread_clockjoin*",
            "pthread_timedjoin*",
            "pthread_tryjoin*",
            "thrd_join",
        ],
        None,
    ),
    (
        "waiting on a lock",
        &[
            "pthread_mutex_lock*",
            "pthread_mutex_timedlock*",
            "pthread_mutex_clocklock*",
            "lll_lock_wait*",
            "futex_lock_pi*",
            // Spelled out: `pthread_rwlock_*lock` would take unlock too.
            "pthread_rwlock_rdlock*",
            "pthread_rwlock_wrlock*",
            "pthread_rwlock_timed??lock*",
            "pthread_rwlock_clock??lock*",
            "sem_wait*",
            "sem_timedwait*",
            "sem_clockwait*",
            // glibc's sem_wait and its slow path.
            "new_sem_wait*",
            "mtx_lock",
            "mtx_timedlock",
        ],
        None,
    ),
    (
        "waiting on a futex",
        &["futex_wait*", "futex_abstimed_wait*", "do_futex"],
        None,
    ),
    (
        "accepting a connection",
        &[
            "accept",
            "accept4",
            "do_accept",
            "inet_csk_accept",
            "unix_accept",
        ],
        None,
    ),
    (
        "polling",
        &[
            "poll",
            "ppoll",
            "select",
            "pselect*",
            "epoll_wait",
            "epoll_pwait",
            "epoll_pwait2",
            "do_sys_poll",
            "do_select",
            "core_sys_select",
            "do_epoll_wait",
            "do_epoll_pwait",
            "ep_poll",
        ],
        None,
    ),
    (
        "sleeping",
        &[
            "nanosleep",
            "clock_nanosleep*",
            "usleep",
            "sleep",
            "thrd_sleep",
            "hrtimer_nanosleep",
            "do_nanosleep",
        ],
        None,
    ),
    (
        "blocked reading a file descriptor",
        &[
            "read",
            "readv",
            "pread*",
            "read_nocancel",
            "recv",
            "recvfrom",
            "recvmsg",
            "recvmmsg",
            "ksys_read",
            "ksys_pread64",
            "vfs_read*",
            // Linux 6.x splits pipe_read into anon_pipe_read and fifo_pipe_read.
            "*pipe_read",
            "sock_recvmsg",
        ],
        None,
    ),
    (
        "blocked writing a file descriptor",
        &[
            "write",
            "writev",
            "pwrite*",
            "write_nocancel",
            "send",
            "sendto",
            "sendmsg",
            "sendmmsg",
            "ksys_write",
            "ksys_pwrite64",
            "vfs_write*",
            "*pipe_write",
            "sock_sendmsg",
        ],
        None,
    ),
    (
        "waiting for a child process",
        &[
            "wait",
            "wait3",
            "wait4",
            "waitpid",
            "waitid",
            "do_wait",
            "kernel_wait4",
            "kernel_waitid",
        ],
        None,
    ),
    (
        "waiting for a signal",
        &[
            "pause",
            "sigpause",
            "sigsuspend",
            "sigwait",
            "sigwaitinfo",
            "sigtimedwait",
            "*sys_pause",
            "do_sigtimedwait",
        ],
        None,
    ),
    (
        "blocked in the kernel (uninterruptible, usually I/O)",
        &[],
        Some(StateFilter::Is(TaskState::Uninterruptible)),
    ),
    ("waiting in the kernel", &[], Some(StateFilter::Waiting)),
];

/// Annotation rules, in the order they are tried.
#[derive(Clone, Debug)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// The built-in rules.
    pub fn builtin() -> Rules {
        let rules = BUILTIN
            .iter()
            .map(|&(description, patterns, state)| Rule {
                description: Cow::Borrowed(description),
                frames: if patterns.is_empty() {
                    FramePatterns::Any
                } else {
                    FramePatterns::OneOf(patterns)
                },
                state,
            })
            .collect();
        Rules { rules }
    }

    /// Rules read from a TOML file, tried before the built-in ones.
    pub fn with_file(path: &Path) -> Result<Rules, UsageError> {
        let origin = path.display().to_string();
        let text = crate::input::read_regular(path, "rules file", crate::input::MAX_RULES_BYTES)?;
        Rules::with_text(&text, &origin)
    }

    /// Same, from text; `origin` names the file in errors.
    pub fn with_text(text: &str, origin: &str) -> Result<Rules, UsageError> {
        let file: RulesFile = toml::from_str(text).map_err(|e| {
            // The message alone: Display adds a multi-line source snippet.
            // Keys quoted in the message may hold newlines.
            let what = e.message().replace('\n', "\\n");
            bad_file(origin, text, e.span().map(|span| span.start), &what)
        })?;
        let at = |offset: usize, what: &str| bad_file(origin, text, Some(offset), what);
        let mut rules = file
            .rule
            .into_iter()
            .map(|entry| entry_to_rule(entry, &at))
            .collect::<Result<Vec<_>, _>>()?;
        rules.extend(Rules::builtin().rules);
        Ok(Rules { rules })
    }

    /// The description of the first rule that matches this stack, if any.
    /// `frames` are outermost first, kernel frames last (as in
    /// [`crate::report::StackReport::frames`]).
    pub fn annotate(&self, frames: &[Arc<Frame>], state: TaskState) -> Option<&str> {
        // Rules on the state alone come first among the built-ins (every
        // on-CPU sample stops at the first): only name the frames when a
        // rule needs them.
        let first_on_frames = self
            .rules
            .iter()
            .position(|rule| !matches!(rule.frames, FramePatterns::Any))
            .unwrap_or(self.rules.len());
        if let Some(rule) = self.rules[..first_on_frames]
            .iter()
            .find(|rule| rule.matches(&[], state))
        {
            return Some(rule.description.as_ref());
        }
        let names: Vec<Cow<str>> = frames
            .iter()
            .rev()
            .map(|frame| match &frame.function {
                Some(function) => Cow::Borrowed(&**function),
                None => Cow::Owned(frame.short_name()),
            })
            .collect();
        let names: Vec<(&str, &str)> = names
            .iter()
            .map(|name| (name.as_ref(), normalize(name)))
            .collect();
        self.rules[first_on_frames..]
            .iter()
            .find(|rule| rule.matches(&names, state))
            .map(|rule| rule.description.as_ref())
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A rules file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Spanned<RuleEntry>>,
}

/// One `[[rule]]` as written; checked by [`entry_to_rule`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    description: Option<Spanned<String>>,
    frames: Option<Spanned<Vec<Spanned<String>>>>,
    state: Option<Spanned<String>>,
}

fn entry_to_rule(
    entry: Spanned<RuleEntry>,
    at: &dyn Fn(usize, &str) -> UsageError,
) -> Result<Rule, UsageError> {
    let rule_start = entry.span().start;
    let entry = entry.into_inner();

    let description = match entry.description {
        None => {
            return Err(at(
                rule_start,
                "rule has no description; add description = \"what the thread is doing\"",
            ))
        }
        Some(d) if d.get_ref().trim().is_empty() => {
            return Err(at(
                d.span().start,
                "description is empty; say what the thread is doing",
            ))
        }
        Some(d) if d.get_ref().contains('\n') => {
            return Err(at(d.span().start, "description must be one line"))
        }
        // Shown next to names from targets, and escaped like them.
        Some(d) => crate::text::escape_controls_owned(d.into_inner()),
    };

    let state = match entry.state {
        None => None,
        Some(name) => Some(StateFilter::from_name(name.get_ref()).ok_or_else(|| {
            let allowed: Vec<&str> = TaskState::ALL.iter().map(|s| s.name()).collect();
            at(
                name.span().start,
                &format!(
                    "unknown state `{}`; use one of {}, waiting",
                    name.get_ref(),
                    allowed.join(", ")
                ),
            )
        })?),
    };

    let frames = match entry.frames {
        None if state.is_none() => {
            return Err(at(
                rule_start,
                "rule has neither frames nor state; add frames = [\"function\", ...] or state = \"...\"",
            ))
        }
        None => FramePatterns::Any,
        Some(list) if list.get_ref().is_empty() => {
            return Err(at(
                list.span().start,
                "frames is empty; list function patterns, innermost first, or remove it",
            ))
        }
        Some(list) => FramePatterns::Sequence(
            list.into_inner()
                .into_iter()
                .map(|pattern| {
                    if pattern.get_ref().is_empty() {
                        Err(at(
                            pattern.span().start,
                            "empty frame pattern; use \"*\" to match any function",
                        ))
                    } else {
                        Ok(pattern.into_inner())
                    }
                })
                .collect::<Result<_, _>>()?,
        ),
    };

    Ok(Rule {
        description: Cow::Owned(description),
        frames,
        state,
    })
}

/// One line: the file, the line of `offset` (when known), what is wrong and what to do.
fn bad_file(origin: &str, text: &str, offset: Option<usize>, what: &str) -> UsageError {
    let line = match offset {
        Some(offset) => {
            let newlines = text.bytes().take(offset).filter(|&b| b == b'\n').count();
            let line = newlines + 1;
            format!(", line {line}")
        }
        None => String::new(),
    };
    UsageError(format!(
        "rules file {origin}{line}: {what}; see \"Annotation rules\" in README.md"
    ))
}

fn pattern_matches(pattern: &str, (name, normalized): (&str, &str)) -> bool {
    glob_matches(pattern, name) || (normalized != name && glob_matches(pattern, normalized))
}

/// The name without the decorations that hide the function people know:
/// a symbol version (`@@GLIBC_2.3.2`), compiler clone suffixes (`.isra.0`,
/// `.constprop.0`, `.part.0`, `.cold`), and leading `_`, `GI_` and `libc_`
/// (glibc's `___pthread_cond_wait`, `__GI___libc_read`).
fn normalize(name: &str) -> &str {
    let mut name = name.split('@').next().unwrap_or(name);
    name = name.split('.').next().unwrap_or(name);
    loop {
        let stripped = name
            .trim_start_matches('_')
            .trim_start_matches("GI_")
            .trim_start_matches("libc_");
        if stripped == name {
            return name;
        }
        name = stripped;
    }
}

/// Whether the whole of `name` matches `pattern`, where `*` is any run of
/// characters, `?` is one character and everything else is literal.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    // After a mismatch, retry from the last `*` with it taking one more
    // character: (pattern index after the `*`, name index it resumes at).
    let mut retry: Option<(usize, usize)> = None;
    // `?` and backtracking step over whole UTF-8 characters; literal bytes
    // can only match whole characters, as UTF-8 is prefix-free.
    let char_len = |n: usize| match name[n] {
        b if b < 0xe0 => 1 + usize::from(b >= 0xc0),
        b if b < 0xf0 => 3,
        _ => 4,
    };
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                retry = Some((p, n));
            }
            Some(b'?') => {
                p += 1;
                n += char_len(n);
            }
            Some(&byte) if byte == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match retry {
                Some((after_star, resume)) => {
                    let resume = resume + char_len(resume);
                    retry = Some((after_star, resume));
                    (p, n) = (after_star, resume);
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stack from function names, outermost first; names starting with
    /// `k:` are kernel frames.
    fn stack(names: &[&str]) -> Vec<Arc<Frame>> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (kernel, function) = match name.strip_prefix("k:") {
                    Some(function) => (true, function),
                    None => (false, *name),
                };
                Arc::new(Frame {
                    function: Some(function.into()),
                    ..Frame::code(kernel, Some(0x1000 + i as u64))
                })
            })
            .collect()
    }

    fn builtin(names: &[&str], state: TaskState) -> Option<String> {
        Rules::builtin()
            .annotate(&stack(names), state)
            .map(str::to_string)
    }

    fn error(text: &str) -> String {
        Rules::with_text(text, "./rules.toml").unwrap_err().0
    }

    #[test]
    fn builtin_categories() {
        use TaskState::*;
        let cases: &[(&[&str], TaskState, &str)] = &[
            (&["main", "work"], Running, "running on CPU"),
            (&["main", "__libc_read"], Running, "running on CPU"),
            (&["main", "work"], Runnable, "waiting for a CPU (preempted)"),
            (
                &[
                    "start_thread",
                    "worker",
                    "___pthread_cond_wait",
                    "__futex_abstimed_wait_common64",
                    "k:entry_SYSCALL_64_after_hwframe",
                    "k:do_futex",
                    "k:futex_wait",
                    "k:schedule",
                ],
                Sleeping,
                "waiting on a condition variable",
            ),
            (
                &["main", "cnd_wait@@GLIBC_2.34"],
                Sleeping,
                "waiting on a condition variable",
            ),
            (
                &["main", "___pthread_join", "__pthread_clockjoin_ex"],
                Sleeping,
                "waiting for a thread to exit",
            ),
            (
                &["worker", "___pthread_mutex_lock", "__GI___lll_lock_wait"],
                Sleeping,
                "waiting on a lock",
            ),
            (
                &["worker", "___pthread_rwlock_timedwrlock64"],
                Sleeping,
                "waiting on a lock",
            ),
            (
                &[
                    "worker",
                    "__new_sem_wait_slow64.constprop.0",
                    "do_futex_wait.constprop.0",
                ],
                Sleeping,
                "waiting on a lock",
            ),
            (
                &["worker", "syscall", "k:__x64_sys_futex", "k:do_futex"],
                Sleeping,
                "waiting on a futex",
            ),
            (
                &["worker", "__GI___futex_abstimed_wait64"],
                Sleeping,
                "waiting on a futex",
            ),
            (
                &["serve", "__libc_accept", "k:inet_csk_accept"],
                Sleeping,
                "accepting a connection",
            ),
            (
                &["loop", "epoll_wait", "k:do_epoll_wait"],
                Sleeping,
                "polling",
            ),
            (&["loop", "__GI___poll"], Sleeping, "polling"),
            (&["k:do_epoll_pwait.part.0"], Sleeping, "polling"),
            (
                &["main", "__sleep", "__GI___clock_nanosleep"],
                Sleeping,
                "sleeping",
            ),
            (&["main", "__GI___nanosleep"], Sleeping, "sleeping"),
            (
                &["main", "_IO_file_underflow", "__GI___libc_read"],
                Sleeping,
                "blocked reading a file descriptor",
            ),
            (
                &["[unknown]", "k:ksys_read", "k:vfs_read", "k:anon_pipe_read"],
                Sleeping,
                "blocked reading a file descriptor",
            ),
            (
                &["main", "__libc_write", "k:ksys_write", "k:anon_pipe_write"],
                Sleeping,
                "blocked writing a file descriptor",
            ),
            (
                &["main", "__GI___waitpid", "k:kernel_wait4", "k:do_wait"],
                Sleeping,
                "waiting for a child process",
            ),
            (
                &["main", "__libc_pause", "k:__x64_sys_pause"],
                Sleeping,
                "waiting for a signal",
            ),
            (&["k:sigsuspend.isra.0"], Sleeping, "waiting for a signal"),
            (
                &["main", "fsync", "k:io_schedule"],
                Uninterruptible,
                "blocked in the kernel (uninterruptible, usually I/O)",
            ),
            (
                &["k:kthread", "k:worker_thread"],
                Idle,
                "waiting in the kernel",
            ),
            (&["main", "work"], Stopped, "waiting in the kernel"),
        ];
        for &(names, state, expected) in cases {
            assert_eq!(
                builtin(names, state).as_deref(),
                Some(expected),
                "{names:?} {state:?}"
            );
        }
    }

    #[test]
    fn builtin_leaves_some_stacks_alone() {
        assert_eq!(builtin(&["main", "work"], TaskState::Unknown), None);
        assert_eq!(builtin(&[], TaskState::Unknown), None);
        // Whole names only: a function called `readme` is not `read`.
        assert_eq!(builtin(&["readme"], TaskState::Unknown), None);
        // Not `pthread_rwlock_*lock`: unlocking is no wait.
        assert_eq!(
            builtin(&["pthread_rwlock_unlock"], TaskState::Unknown),
            None
        );
    }

    #[test]
    fn builtin_rules_are_in_the_documented_order() {
        let rules = Rules::builtin();
        assert_eq!(rules.len(), 15);
        assert!(!rules.is_empty());
        // A condition variable wait is a futex wait too; the specific rule wins.
        assert_eq!(
            builtin(&["pthread_cond_wait", "k:futex_wait"], TaskState::Sleeping).as_deref(),
            Some("waiting on a condition variable")
        );
    }

    #[test]
    fn descriptions_show_control_characters_escaped() {
        let rules = Rules::with_text(
            "[[rule]]\ndescription = \"stuck \\u001b[2J\\r here\"\nframes = [\"spin\"]\n",
            "rules.toml",
        )
        .unwrap();
        assert_eq!(
            rules.annotate(&stack(&["main", "spin"]), TaskState::Running),
            Some("stuck \\x1b[2J\\x0d here")
        );
    }

    #[test]
    fn custom_rules_come_first_and_first_match_wins() {
        let rules = Rules::with_text(
            r#"
            [[rule]]
            description = "MPM worker waiting for connection"
            frames = ["pthread_cond_wait", "ap_queue_pop"]

            [[rule]]
            description = "a later rule that also matches"
            frames = ["pthread_cond_wait"]
            "#,
            "rules.toml",
        )
        .unwrap();
        assert_eq!(rules.len(), 17);
        let frames = stack(&[
            "start_thread",
            "worker_thread",
            "ap_queue_pop",
            "apr_thread_cond_wait",
            "___pthread_cond_wait",
            "k:futex_wait",
        ]);
        assert_eq!(
            rules.annotate(&frames, TaskState::Sleeping),
            Some("MPM worker waiting for connection")
        );
        let elsewhere = stack(&["main", "___pthread_cond_wait"]);
        assert_eq!(
            rules.annotate(&elsewhere, TaskState::Sleeping),
            Some("a later rule that also matches")
        );
        // Still running: the custom rule has no state and comes first.
        assert_eq!(
            rules.annotate(&frames, TaskState::Running),
            Some("MPM worker waiting for connection")
        );
    }

    #[test]
    fn frames_are_a_subsequence_innermost_first() {
        let rules = Rules::with_text(
            "[[rule]]\ndescription = \"d\"\nframes = [\"inner\", \"outer\"]",
            "rules.toml",
        )
        .unwrap();
        let matches =
            |names: &[&str]| rules.annotate(&stack(names), TaskState::Unknown) == Some("d");
        assert!(matches(&["outer", "inner"]));
        assert!(matches(&["main", "outer", "a", "b", "inner", "k:schedule"]));
        assert!(!matches(&["inner", "outer"]), "reversed order");
        assert!(!matches(&["inner"]));
        assert!(!matches(&["outer"]));
        // One frame cannot match two patterns.
        let same = Rules::with_text(
            "[[rule]]\ndescription = \"d\"\nframes = [\"f*\", \"f*\"]",
            "rules.toml",
        )
        .unwrap();
        assert_eq!(same.annotate(&stack(&["f1"]), TaskState::Unknown), None);
        assert_eq!(
            same.annotate(&stack(&["f1", "f2"]), TaskState::Unknown),
            Some("d")
        );
    }

    #[test]
    fn frames_without_function_match_by_short_name() {
        let rules = Rules::with_text(
            "[[rule]]\ndescription = \"in libfoo\"\nframes = [\"[libfoo.so]\"]",
            "rules.toml",
        )
        .unwrap();
        let frame = Frame {
            module: Some("/usr/lib/libfoo.so".into()),
            ..Frame::code(false, Some(0x1234))
        };
        assert_eq!(
            rules.annotate(&[Arc::new(frame)], TaskState::Unknown),
            Some("in libfoo")
        );
    }

    #[test]
    fn state_filter_and_waiting() {
        let rules = Rules::with_text(
            r#"
            [[rule]]
            description = "idle worker"
            frames = ["worker"]
            state = "sleeping"

            [[rule]]
            description = "worker waiting"
            frames = ["worker"]
            state = "waiting"
            "#,
            "rules.toml",
        )
        .unwrap();
        let frames = stack(&["worker", "k:schedule"]);
        let annotate = |state| rules.annotate(&frames, state);
        assert_eq!(annotate(TaskState::Sleeping), Some("idle worker"));
        assert_eq!(annotate(TaskState::Uninterruptible), Some("worker waiting"));
        assert_eq!(annotate(TaskState::Traced), Some("worker waiting"));
        assert_eq!(annotate(TaskState::Running), Some("running on CPU"));
        assert_eq!(annotate(TaskState::Unknown), None);
    }

    #[test]
    fn state_only_rule() {
        let rules =
            Rules::with_text("[[rule]]\ndescription = \"d\"\nstate = \"dead\"", "r").unwrap();
        assert_eq!(rules.annotate(&[], TaskState::Dead), Some("d"));
    }

    #[test]
    fn normalization() {
        for (name, normalized) in [
            ("___pthread_cond_wait", "pthread_cond_wait"),
            ("pthread_cond_wait@@GLIBC_2.3.2", "pthread_cond_wait"),
            ("pthread_cond_wait@GLIBC_2.2.5", "pthread_cond_wait"),
            ("__libc_read", "read"),
            ("__GI___libc_read", "read"),
            ("__GI___nanosleep", "nanosleep"),
            ("__GI___clock_nanosleep", "clock_nanosleep"),
            ("do_sigtimedwait.isra.0", "do_sigtimedwait"),
            ("do_epoll_pwait.constprop.0", "do_epoll_pwait"),
            ("foo.part.0", "foo"),
            ("foo.cold", "foo"),
            ("main", "main"),
            ("___", ""),
        ] {
            assert_eq!(normalize(name), normalized, "{name}");
        }
        let matches = |pattern, name| pattern_matches(pattern, (name, normalize(name)));
        assert!(matches("pthread_cond_wait", "___pthread_cond_wait"));
        assert!(matches("read", "__libc_read"));
        assert!(matches("read", "__GI___libc_read"));
        assert!(matches("nanosleep", "__GI___nanosleep"));
        // The name as is still counts.
        assert!(matches("__libc_read", "__libc_read"));
        assert!(matches("*.isra.*", "foo.isra.0"));
        assert!(!matches("read", "readv"));
    }

    #[test]
    fn globs() {
        for (pattern, name, expected) in [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc", "ab", false),
            ("", "", true),
            ("", "a", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a*", "a", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbcd", false),
            ("*c", "cccc", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXcYb", false),
            ("?", "a", true),
            ("?", "", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("?", "é", true),
            ("*é?", "aéb", true),
            ("??", "é", false),
            ("[a]", "[a]", true),
            ("**", "x", true),
        ] {
            assert_eq!(
                glob_matches(pattern, name),
                expected,
                "{pattern:?} {name:?}"
            );
        }
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, expected) in [
            (
                "[[rule]]\ndescription = \"d\"\nframe = [\"x\"]\n",
                "rules file ./rules.toml, line 3: unknown field `frame`",
            ),
            (
                "# comment\n[[rule]]\ndescription = \"d\"\nframes = [\"x\"\n",
                "rules file ./rules.toml, line 4: unclosed array, expected `]`",
            ),
            (
                "[[rule]]\ndescription = \"d\"\nframes = [\"x\"]\n\n[[rule]]\nframes = [\"y\"]\n",
                "rules file ./rules.toml, line 5: rule has no description",
            ),
            (
                "[[rule]]\ndescription = \"  \"\nframes = [\"x\"]\n",
                "rules file ./rules.toml, line 2: description is empty",
            ),
            (
                "[[rule]]\ndescription = \"\"\"\ntwo\nlines\"\"\"\nframes = [\"x\"]\n",
                "rules file ./rules.toml, line 2: description must be one line",
            ),
            (
                "\n[[rule]]\ndescription = \"d\"\n",
                "rules file ./rules.toml, line 2: rule has neither frames nor state",
            ),
            (
                "[[rule]]\ndescription = \"d\"\nframes = []\n",
                "rules file ./rules.toml, line 3: frames is empty",
            ),
            (
                "[[rule]]\ndescription = \"d\"\nframes = [\n  \"x\",\n  \"\",\n]\n",
                "rules file ./rules.toml, line 5: empty frame pattern",
            ),
            (
                "[[rule]]\ndescription = \"d\"\nstate = \"asleep\"\n",
                "rules file ./rules.toml, line 3: unknown state `asleep`; use one of running, \
                 runnable, sleeping, uninterruptible, idle, stopped, traced, dead, unknown, waiting",
            ),
            (
                "[[rule]]\ndescription = \"d\"\nstate = \"sleeping\"\n[[rules]]\n",
                "rules file ./rules.toml, line 4: unknown field `rules`",
            ),
            (
                "[[rule]]\ndescription = \"d\"\nframes = \"x\"\n",
                "rules file ./rules.toml, line 3: invalid type",
            ),
        ] {
            let message = error(text);
            assert!(message.starts_with(expected), "{text:?}:\n{message}");
            assert!(
                message.ends_with("; see \"Annotation rules\" in README.md"),
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn unreadable_file() {
        let message = Rules::with_file(Path::new("/nonexistent/rules.toml"))
            .unwrap_err()
            .0;
        assert!(
            message.starts_with("cannot read rules file /nonexistent/rules.toml: "),
            "{message}"
        );
        assert!(!message.contains("line"), "{message}");
    }

    #[test]
    fn empty_file_has_only_builtin_rules() {
        let rules = Rules::with_text("# nothing yet\n", "rules.toml").unwrap();
        assert_eq!(rules.len(), Rules::builtin().len());
    }
}
