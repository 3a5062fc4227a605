//! What recording (`app`) and dumping (`dump`) share: starting the sampler,
//! with an explanation when the kernel refuses it, and keeping its Python
//! maps in step with what the pipeline found.
use anyhow::Result;

use crate::{
    messages,
    pipeline::Pipeline,
    preflight,
    python::PythonChange,
    sampler::{Sampler, SamplerOptions},
};

/// Tells the sampler which processes run Python, found or gone since the
/// last call. A full map only costs those processes their Python frames.
pub fn update_python(sampler: &mut Sampler, pipeline: &mut Pipeline) {
    for change in pipeline.python_changes() {
        let applied = match change {
            PythonChange::Found(pid, process) => sampler.set_python_process(pid, Some(&process)),
            PythonChange::Gone(pid) => sampler.set_python_process(pid, None),
            PythonChange::ThreadsGone(tids) => sampler.forget_python_threads(&tids),
        };
        if let Err(error) = applied {
            messages::warn(&format!("warning: {error:#}"));
        }
    }
}

/// Starts the sampler; a kernel that refuses the program gets an explanation.
pub fn start_sampler(options: &SamplerOptions) -> Result<Sampler> {
    Sampler::start(options).map_err(|e| {
        preflight::explain_refusal(&e)
            .map(anyhow::Error::from)
            .unwrap_or(e)
    })
}

/// Sets the limits on the targets' files read for symbols and unwinding:
/// `--max-file-size`, and as many open descriptors as the system allows.
pub fn prepare_target_files(max_file_size: u64) {
    crate::target_file::set_max_file_size(max_file_size);
    crate::target_file::raise_descriptor_limit();
}
