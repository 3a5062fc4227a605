//! The one way tripod-bpf tells the user things on stderr, besides its
//! output and the status line: progress [`note`]s, which `-q` silences,
//! [`warn`]ings, which always show, and the [`error`] a run ends with.
//!
//! Notes and warnings start with `[tripod] `; a warning says `warning:`
//! itself when it is one in so many words (a lost-samples hint or an
//! unsupported Python is shown just as plainly, without the word).
//!
//! Every line is written ignoring failure: after SIGHUP stderr is often a
//! terminal that is gone (EIO), and `eprintln!` would panic there, losing the
//! output it was about to write.
use std::{
    io::Write as _,
    sync::atomic::{AtomicBool, Ordering},
};

/// Whether `-q` was given: set once, before the run starts.
static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: from now on [`note`] writes nothing.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Progress: what is being done, where the output goes, how the run ended.
/// Left out with `-q`.
pub fn note(message: &str) {
    if !QUIET.load(Ordering::Relaxed) {
        line(&format!("[tripod] {message}"));
    }
}

/// Something the user should act on or know about the result (samples lost,
/// frames that cannot be read): shown even with `-q`.
pub fn warn(message: &str) {
    line(&format!("[tripod] {message}"));
}

/// The error that ends tripod-bpf, as `tripod-bpf: error: ...`.
pub fn error(message: &str) {
    line(&format!("tripod-bpf: error: {message}"));
}

/// One write, so a line is never split by another thread's.
fn line(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}
