//! Output formats and destinations. The only modules that write results.
//!
//! Every format implements [`Render`]: one call per report (each interval,
//! or once for the whole run) and one at the end with the run's summary; or,
//! for `tripod-bpf dump`, one call per thread dump.
pub(crate) mod folded;
pub mod json;
mod log;
pub(crate) mod pprof;
pub mod push;
mod speedscope;
mod status;
mod svg;

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use anyhow::Result;

pub use self::{
    folded::Folded,
    json::{Document, DumpDocument, Json},
    log::{describe_completeness, Log},
    pprof::Pprof,
    speedscope::Speedscope,
    status::{Progress, StatusLine},
    svg::Svg,
};
use crate::{
    config::{OutputDest, OutputFormat},
    error::UsageError,
    report::{Report, Summary, ThreadDump},
};

/// Renders reports in one format.
pub trait Render {
    /// Writes one report (an interval, or the whole run).
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()>;
    /// Writes the end-of-run summary, if the format has one.
    fn summary(&mut self, summary: &Summary, out: &mut dyn Write) -> io::Result<()>;
    /// Writes one snapshot of every thread of a process.
    fn dump(&mut self, dump: &ThreadDump, out: &mut dyn Write) -> io::Result<()>;
}

pub fn renderer(format: OutputFormat) -> Box<dyn Render> {
    match format {
        OutputFormat::Log => Box::new(Log),
        OutputFormat::Folded => Box::new(Folded),
        OutputFormat::Json => Box::new(Json),
        OutputFormat::Svg => Box::new(Svg),
        OutputFormat::Pprof => Box::new(Pprof),
        OutputFormat::Speedscope => Box::new(Speedscope),
    }
}

/// An opened destination with its renderer.
pub struct Output {
    renderer: Box<dyn Render>,
    writer: Box<dyn Write>,
    /// The path written to, or `-` for stdout.
    pub name: String,
}

impl Output {
    /// Opens the destination now, so a bad path fails before sampling starts.
    pub fn open(dest: &OutputDest, format: OutputFormat) -> Result<Output> {
        let (writer, name): (Box<dyn Write>, String) = match dest {
            OutputDest::Stdout => (Box::new(io::stdout()), "-".to_string()),
            OutputDest::Discard => (Box::new(io::sink()), "nowhere (--push only)".to_string()),
            OutputDest::File(path) => {
                let file = File::create(path).map_err(|e| cannot_create(path, &e))?;
                (Box::new(BufWriter::new(file)), path.display().to_string())
            }
            OutputDest::TempFile => {
                let dir = std::env::temp_dir();
                // O_CREAT|O_EXCL with mode 0600: never an existing file, never through a symlink.
                let (file, path) = tempfile::Builder::new()
                    .prefix("tripod_")
                    .suffix(format.suffix())
                    .rand_bytes(6)
                    .tempfile_in(&dir)
                    .map_err(|e| cannot_create(&dir.join("tripod_XXXXXX"), &e))?
                    .keep()
                    .map_err(|e| cannot_create(&dir.join("tripod_XXXXXX"), &e.error))?;
                (Box::new(BufWriter::new(file)), path.display().to_string())
            }
        };
        Ok(Output {
            renderer: renderer(format),
            writer,
            name,
        })
    }

    pub fn report(&mut self, report: &Report) -> io::Result<()> {
        self.renderer.report(report, &mut self.writer)?;
        self.writer.flush()
    }

    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.renderer.summary(summary, &mut self.writer)?;
        self.writer.flush()
    }

    pub fn dump(&mut self, dump: &ThreadDump) -> io::Result<()> {
        self.renderer.dump(dump, &mut self.writer)?;
        self.writer.flush()
    }
}

fn cannot_create(path: &Path, error: &io::Error) -> UsageError {
    UsageError(format!(
        "cannot create output file {}: {error}; check that the directory exists and is writable, or pass -o PATH",
        path.display()
    ))
}

#[cfg(test)]
mod tests;
