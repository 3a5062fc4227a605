//! End-to-end tests of the `tripod-bpf` binary against the C fixtures in `fixtures/`.
//!
//! One test binary, so that the global lock in `tripod_tests::serial` really keeps the
//! sampler runs apart. Tests that load BPF programs skip themselves without root.

// Bad command lines and missing privileges: exit status 2 and a single error line.
mod cli_errors;
// Cgroups and namespaces: --cgroup filtering, cgroups in the outputs, namespace pids.
mod containers;
// Core files (gdb's gcore, the kernel's core dumps) dumped like the live processes.
mod cores;
// Every output format from one recorded profile, read by tools that did not come from us.
mod formats;
// Files a target controls (debug links to FIFOs and giants, corrupt DWARF) cannot hang us.
mod hostile_files;
// Names a target chooses (Python functions and files, threads, processes) never reach
// any output raw: control characters show as visible escapes.
mod hostile_names;
// JIT code: names from runtimes' perf maps (Node, CPython's -X perf, Java), stacks
// unwound through code that has no unwind information, the vDSO named.
mod jit;
// The output files and formats: the default log file, JSON, interval reports.
mod output;
// Output files among other users' files, and report's input as a stream.
mod output_files;
// --push: profiles sent to a local receiver that checks Pyroscope's ingest API.
mod push;
// CPython 3.11 targets: Python frames in place of the interpreter loop, locals, py-spy's view.
mod python;
// `report` of other tools' stacks: gdb, eu-stack, py-spy dumps and Python tracebacks.
mod report_sources;
// Signals (SIGHUP, early and repeated ones), processes whose main thread exited, odd dumps.
mod signals;
// What gets sampled: call chains, target selection, kernel frames, threads, how runs end.
mod sampling;
// `top`: the live view driven in a real terminal (tmux), and its plain table through a pipe.
mod top;
// Complete user stacks without frame pointers: copied stacks unwound with .eh_frame.
mod unwinding;
// `--unwind tables`: user stacks walked in the kernel with compiled .eh_frame rows.
mod unwinding_tables;
// Where threads wait: dumps, annotation rules, off-CPU and wall-clock time.
mod waiting;
