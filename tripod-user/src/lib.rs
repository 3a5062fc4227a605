//! tripod-bpf: an eBPF stack sampler that writes Tripod-style tracebacks,
//! folded stacks and JSON.
//!
//! The pipeline, one module each: [`cli`] (arguments) -> [`config`] ->
//! [`preflight`] (checks) -> [`sampler`] (eBPF, the only aya user) ->
//! [`unwind`] (copied user stacks to addresses with DWARF CFI, the only
//! framehop user) -> [`stack`] (typed raw frames; [`python`] puts the
//! interpreter's frames in place of its native ones) -> [`aggregate`] (counts,
//! addresses only) -> [`process`] + [`symbolize`] (the only blazesym user)
//! via [`resolve`] -> [`annotate`] -> [`report`] -> [`output`] (the only
//! writers). [`pipeline`] carries samples through these stages; [`app`] runs
//! a recording and [`dump`] a thread dump; [`signals`] tells both when to stop.
//! Everything said to the user on stderr goes through [`messages`].
//! Names that come from targets are escaped by [`text`] where they enter;
//! every file read for a target is opened by [`target_file`], and the files
//! the user names by [`input`] under the same policy.
pub mod aggregate;
pub mod annotate;
pub mod app;
pub mod cli;
pub mod config;
pub mod dump;
#[cfg(test)]
mod elf_corpus_tests;
pub mod error;
pub mod ingest;
pub mod input;
pub mod live;
pub mod messages;
pub mod model;
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
pub mod unwind;
pub mod wait;
