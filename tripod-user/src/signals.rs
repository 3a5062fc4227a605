//! SIGINT, SIGTERM and SIGHUP, from the start of a run to its end.
//!
//! The handlers are installed first thing, before preflight and before the
//! BPF programs load, so no signal ever kills tripod-bpf by its default
//! action with nothing written. The first signal asks the run to stop: a run
//! still starting skips sampling and writes an empty output; a run that is
//! sampling drains and writes what it has. SIGHUP (a closed terminal, a
//! dropped ssh session) counts like SIGTERM.
//!
//! Once the run is stopping (a signal, the end of `--duration`, the targets
//! gone), SIGTERM and SIGHUP are ignored: what was sampled is being written.
//! A SIGINT then (a second Ctrl-C at a stuck end of run) aborts: the abort
//! hooks run (they stop the command of `-- COMMAND`), one line says where
//! the output is, and tripod-bpf exits with 130.
//!
//! The signals are read on a thread of their own (signal-hook's self-pipe),
//! so a main thread blocked in a write or a slow symbol lookup cannot delay
//! the abort. Every other thread blocks them, so they never interrupt the
//! main thread's system calls (the verifier gives up on a load when a signal
//! is pending for the loading thread). The mask is inherited across `exec`,
//! so the command of `-- COMMAND` empties it before it starts.
use std::sync::{
    atomic::{AtomicBool, AtomicI32, Ordering},
    Arc, Mutex,
};

use anyhow::{Context as _, Result};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};
use tokio::sync::watch;

use crate::messages;

/// The exit status of a run aborted by a second SIGINT: 128 + SIGINT, as a
/// shell reports a program that Ctrl-C killed.
pub const ABORTED_STATUS: i32 = 128 + SIGINT;

/// Something to do before an abort exits, such as stopping a child.
type AbortHook = Box<dyn Fn() + Send>;

/// The stop requests of one run, shared with the thread that reads the signals.
#[derive(Clone)]
pub struct Shutdown(Arc<State>);

struct State {
    /// The first signal received, 0 until one is.
    first: AtomicI32,
    /// From the first signal or [`Shutdown::begin`] on, a SIGINT aborts.
    stopping: AtomicBool,
    /// Wakes [`Shutdown::signalled`] when the first signal arrives.
    notify: watch::Sender<bool>,
    hooks: Mutex<Vec<AbortHook>>,
    /// Where the output goes, for the abort's message.
    output: Mutex<String>,
}

impl Shutdown {
    /// Installs the handlers and starts the thread that reads the signals.
    /// Call it before anything slow.
    pub fn install() -> Result<Shutdown> {
        let mut signals =
            Signals::new(HANDLED).context("installing the SIGINT, SIGTERM and SIGHUP handlers")?;
        // Blocked here, in the main thread, before any other thread starts
        // (threads inherit the mask); a signal pending meanwhile waits for
        // the signal thread.
        set_mask(libc::SIG_BLOCK)?;
        let shutdown = Shutdown::unwired();
        let state = shutdown.0.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Err(error) = set_mask(libc::SIG_UNBLOCK) {
                    messages::warn(&format!("warning: {error:#}"));
                }
                for signal in signals.forever() {
                    state.received(signal);
                }
            })
            .context("starting the signal thread")?;
        Ok(shutdown)
    }

    /// A `Shutdown` no signal reaches (tests, and runs driven by hand).
    pub fn unwired() -> Shutdown {
        Shutdown(Arc::new(State {
            first: AtomicI32::new(0),
            stopping: AtomicBool::new(false),
            notify: watch::channel(false).0,
            hooks: Mutex::new(Vec::new()),
            output: Mutex::new(String::new()),
        }))
    }

    /// The name of the first signal received, if any: slow steps of the
    /// start check it and skip the rest.
    pub fn requested(&self) -> Option<&'static str> {
        signal_name(self.0.first.load(Ordering::SeqCst))
    }

    /// Waits for the first signal and returns its name.
    pub async fn signalled(&self) -> &'static str {
        let mut woken = self.0.notify.subscribe();
        // The sender lives as long as `self`, so this only returns once set.
        let _ = woken.wait_for(|&signalled| signalled).await;
        self.requested().unwrap_or("a signal")
    }

    /// The run is stopping for another reason (its duration ended, the
    /// targets exited): from now on a SIGINT aborts the end of the run.
    pub fn begin(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
    }

    /// Runs `hook` if a second SIGINT aborts the run.
    pub fn on_abort(&self, hook: impl Fn() + Send + 'static) {
        lock(&self.0.hooks).push(Box::new(hook));
    }

    /// Names the output in the abort's message (`-` for stdout).
    pub fn set_output_name(&self, name: &str) {
        *lock(&self.0.output) = name.to_string();
    }

    /// Delivers `signal` as the signal thread does (for tests of the states).
    #[cfg(test)]
    fn received_for_test(&self, signal: i32) -> Received {
        self.0.classify(signal)
    }
}

/// What a signal does, given what came before.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// The first stop request: the run stops and writes what it has.
    Stop,
    /// The run is already stopping; writing goes on.
    Ignored,
    /// A SIGINT while stopping: abort.
    Abort,
}

impl State {
    fn classify(&self, signal: i32) -> Received {
        let was_stopping = self.stopping.swap(true, Ordering::SeqCst);
        let first = self
            .first
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        match (was_stopping, signal) {
            (true, SIGINT) => Received::Abort,
            _ if first => Received::Stop,
            _ => Received::Ignored,
        }
    }

    fn received(&self, signal: i32) {
        match self.classify(signal) {
            Received::Stop => {
                self.notify.send_replace(true);
            }
            Received::Ignored => {}
            Received::Abort => self.abort(),
        }
    }

    /// Runs the hooks, says what is left and exits. The main thread may be
    /// stuck anywhere, so nothing here waits on it: what it has written is
    /// in the output already (each report is flushed as it ends), and the
    /// exit flushes stdout unless the main thread is blocked writing to it.
    fn abort(&self) -> ! {
        if let Ok(hooks) = self.hooks.try_lock() {
            hooks.iter().for_each(|hook| hook());
        }
        let output = self
            .output
            .try_lock()
            .map(|name| name.clone())
            .unwrap_or_default();
        let kept = match output.as_str() {
            "" => "nothing was written".to_string(),
            "-" => "what was written before is on stdout".to_string(),
            name => format!("what was written before is in {name}"),
        };
        // Stderr may be a closed terminal by now: a failed write is no reason to stay.
        messages::error(&format!(
            "interrupted while stopping, so the last report may be missing or cut short; {kept}"
        ));
        std::process::exit(ABORTED_STATUS)
    }
}

/// The signals a run handles.
const HANDLED: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Blocks (`SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) [`HANDLED`] in the calling thread.
fn set_mask(how: i32) -> Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: these only write into `set`, which we own; a null old set is allowed.
    let failed = unsafe {
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    if failed != 0 {
        anyhow::bail!(
            "changing the signal mask: {}",
            std::io::Error::from_raw_os_error(failed)
        );
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn signal_name(signal: i32) -> Option<&'static str> {
    match signal {
        SIGINT => Some("SIGINT"),
        SIGTERM => Some("SIGTERM"),
        SIGHUP => Some("SIGHUP"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_signal_stops_and_a_second_sigint_aborts() {
        let shutdown = Shutdown::unwired();
        assert_eq!(shutdown.requested(), None);
        assert_eq!(shutdown.received_for_test(SIGHUP), Received::Stop);
        assert_eq!(shutdown.requested(), Some("SIGHUP"));
        assert_eq!(shutdown.received_for_test(SIGTERM), Received::Ignored);
        assert_eq!(shutdown.received_for_test(SIGHUP), Received::Ignored);
        assert_eq!(shutdown.received_for_test(SIGINT), Received::Abort);
        // The first signal is the one reported.
        assert_eq!(shutdown.requested(), Some("SIGHUP"));
    }

    #[test]
    fn sigint_aborts_once_the_run_ends_by_itself() {
        let shutdown = Shutdown::unwired();
        shutdown.begin();
        assert_eq!(shutdown.received_for_test(SIGTERM), Received::Stop);
        assert_eq!(shutdown.received_for_test(SIGINT), Received::Abort);

        let ended = Shutdown::unwired();
        ended.begin();
        assert_eq!(ended.received_for_test(SIGINT), Received::Abort);
    }

    #[test]
    fn a_first_sigint_stops() {
        let shutdown = Shutdown::unwired();
        assert_eq!(shutdown.received_for_test(SIGINT), Received::Stop);
        assert_eq!(shutdown.requested(), Some("SIGINT"));
        assert_eq!(shutdown.received_for_test(SIGINT), Received::Abort);
    }

    #[tokio::test]
    async fn signalled_returns_at_once_when_a_signal_came_first() {
        let shutdown = Shutdown::unwired();
        shutdown.0.received(SIGTERM);
        assert_eq!(shutdown.signalled().await, "SIGTERM");
    }
}
