//! What recording (`app`) and dumping (`dump`) share: starting the sampler,
//! with an explanation when the kernel refuses it, and the limits on the
//! targets' files.
use anyhow::Result;

use crate::{
    config::{Config, UnwindMode},
    messages, preflight,
    sampler::{self, SampleSource, Sampler, SamplerOptions},
};

/// Starts the live sampler; a kernel that refuses the program gets an
/// explanation. What comes after it knows it only as a [`SampleSource`].
pub fn start_sampler(options: &SamplerOptions) -> Result<Box<dyn SampleSource>> {
    match Sampler::start(options) {
        Ok(sampler) => Ok(Box::new(sampler)),
        Err(e) => Err(preflight::explain_refusal(&e)
            .map(anyhow::Error::from)
            .unwrap_or(e)),
    }
}

/// `--unwind auto` (the default) becomes `--unwind tables`, which the
/// bench found as complete as `dwarf` for the cost of frame pointers
/// (README, "How user stacks are unwound"). `tables` on a kernel that
/// lacks what the walk needs becomes `--unwind dwarf` (the copy the tables
/// fall back to anyway), with one line naming what is missing, instead of
/// a program the kernel refuses.
pub fn settle_unwind(config: &mut Config) {
    if !matches!(config.unwind, UnwindMode::Tables | UnwindMode::Auto) {
        return;
    }
    config.unwind = match sampler::missing_for_tables() {
        None => UnwindMode::Tables,
        Some(missing) => {
            messages::warn(&messages::tables_unavailable(missing.describe()));
            UnwindMode::Dwarf
        }
    };
}

/// Sets the limits on the targets' files read for symbols and unwinding:
/// `--max-file-size`, and as many open descriptors as the system allows.
pub fn prepare_target_files(max_file_size: u64) {
    crate::target_file::set_max_file_size(max_file_size);
    crate::target_file::raise_descriptor_limit();
}
