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

/// `--unwind tables`, at the end of a run: how user stacks were unwound
/// (`[walked, of them counted in the kernel, not covered, walk failed]`
/// from the kernel's counters; then, of those walked at context switches,
/// `[reused, walked anew]`), how much row memory was used, and which files
/// were left out and why.
pub fn unwind_tables_summary(
    [walked, counted, not_covered, failed]: [u64; 4],
    [reused, walked_anew]: [u64; 2],
    usage: &crate::model::TableUse,
    (malformed, too_many_rows): (usize, usize),
) -> String {
    let mut text = format!(
        "unwind tables: {walked} stacks walked in the kernel ({counted} counted there, \
         {} sent as ring-buffer records), {} copied instead \
         ({not_covered} with code the tables do not cover, {failed} whose walk failed); \
         {} files, {} of {} rows ({} KiB of --unwind-table-size)",
        walked.saturating_sub(counted),
        not_covered + failed,
        usage.files,
        usage.rows,
        usage.capacity_rows,
        usage.capacity_rows * 16 / 1024
    );
    if reused + walked_anew > 0 {
        text += &format!(
            "; at context switches, {reused} stacks were one of the thread's last two walks, \
             reused after re-reading the words it read, {walked_anew} walked anew"
        );
    }
    if malformed + too_many_rows > 0 {
        text += &format!(
            "; {} files not compilable ({malformed} unreadable call frame information, \
             {too_many_rows} with too many rows), copied instead",
            malformed + too_many_rows
        );
    }
    if usage.files_over_bound > 0 {
        text += &format!(
            "; the bound was hit: {} files did not fit and were copied instead, \
             consider a larger --unwind-table-size",
            usage.files_over_bound
        );
    }
    if usage.processes_with_too_many_mappings > 0 {
        text += &format!(
            "; {} processes had more executable mappings than the kernel holds",
            usage.processes_with_too_many_mappings
        );
    }
    text
}

/// `--unwind tables` on a kernel without what the walk needs: the run copies
/// stacks instead (`--unwind dwarf`), and says so once, at the start.
pub fn tables_unavailable(missing: &str) -> String {
    format!(
        "warning: --unwind tables needs {missing}, which this kernel lacks; \
         stacks are copied and unwound in userspace instead (--unwind dwarf): \
         complete, at the cost of a 16 KiB copy per sample"
    )
}

/// The error that ends tripod-bpf, as `tripod-bpf: error: ...`.
pub fn error(message: &str) {
    line(&format!("tripod-bpf: error: {message}"));
}

/// One write, so a line is never split by another thread's.
fn line(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}
