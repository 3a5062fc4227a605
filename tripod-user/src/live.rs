//! What recording (`app`) and dumping (`dump`) share: starting the sampler,
//! with an explanation when the kernel refuses it, and keeping its Python
//! maps in step with what the pipeline found.
use anyhow::Result;

use crate::{
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
            log::warn!("{error:#}");
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
