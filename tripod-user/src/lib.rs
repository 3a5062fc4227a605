//! tripod-bpf: an eBPF stack sampler that writes Tripod-style tracebacks,
//! folded stacks and JSON.
//!
//! The pipeline, one module each, connected one way (ARCHITECTURE.md follows
//! one sample): [`cli`] (arguments) -> [`config`] -> [`preflight`] (checks)
//! -> [`sampler`] (eBPF, the only aya user; [`sampler::SampleSource`] is the
//! seam) -> [`ingest`] ([`unwind`]: copied user stacks to addresses, the only
//! framehop user; [`python`] puts the interpreter's frames in place of its
//! native ones) -> [`aggregate`] (counts, addresses only) -> [`resolve`]
//! (symbols in its own table, through [`process`], [`jit`] (perf maps of
//! JIT code) and [`symbolize`], the only blazesym user) -> [`annotate`] -> [`report`] -> [`output`] (the only
//! writers). [`wait`] accounts waits, [`retire`] retires exited processes,
//! [`pipeline`] connects the stages; [`app`] runs a recording (when it
//! wakes: [`cadence`]) and [`dump`] a thread dump (both through [`live`];
//! [`top`] shows a recording live, an output of its own; a core file's
//! through [`corefile`]); [`session`] holds what they and the
//! offline `report` share; [`model`] is the leaf every stage speaks;
//! [`signals`] tells the runs when to stop; [`cgroup`] names the cgroup and
//! container of each sampled process.
//! Everything said to the user on stderr goes through [`messages`].
//! [`bounded`] holds the caches that stay bounded and the shared names.
//! Names that come from targets are escaped by [`text`] where they enter;
//! every file read for a target is opened by [`target_file`], and the files
//! the user names by [`input`] under the same policy.
pub mod aggregate;
pub mod annotate;
pub mod app;
pub mod bounded;
pub mod cadence;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod corefile;
pub mod counting;
pub mod dump;
#[cfg(test)]
mod elf_corpus_tests;
pub mod error;
pub mod exceptions;
pub mod held;
pub mod ingest;
pub mod input;
pub mod jit;
pub mod live;
pub mod mappings;
pub mod messages;
pub mod model;
#[cfg(test)]
mod module_graph_tests;
pub mod offline;
pub mod output;
pub mod pipeline;
pub mod preflight;
pub mod process;
pub mod python;
pub mod report;
pub mod resolve;
pub mod retire;
pub mod sampler;
pub mod session;
pub mod signals;
pub mod stack;
pub mod symbolize;
pub mod target_file;
pub mod task;
pub mod text;
pub mod top;
pub mod unwind;
pub mod wait;
