//! What every command shares, live or offline (`app`, `dump`, `report`):
//! the annotation rules, and the output of a run that handles signals.
//! `report` needs no root and no sampler, so this module depends on neither.
use anyhow::Result;

use crate::{
    annotate::Rules,
    config::{OutputDest, OutputFormat},
    output::Output,
    signals::Shutdown,
};

/// The annotation rules: the user's file first, then the built-in ones.
pub fn load_rules(path: Option<&std::path::Path>) -> Result<Rules> {
    Ok(match path {
        Some(path) => Rules::with_file(path)?,
        None => Rules::builtin(),
    })
}

/// Opens the output of a run that `shutdown` can abort: the abort's message
/// names it, and a file being written is put in place first.
pub fn open_output(dest: &OutputDest, format: OutputFormat, shutdown: &Shutdown) -> Result<Output> {
    let output = Output::open(dest, format)?;
    shutdown.set_output_name(&output.name);
    if let Some(hook) = output.abort_hook() {
        shutdown.on_abort(hook);
    }
    Ok(output)
}
