//! Where spans go: a JSON-lines file, the terminal, an OTLP collector.

pub mod otlp;

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::Context;

use crate::spans::{Span, span_line};

/// One JSON object per line per span, with the keys `--output` documents.
pub struct JsonLines {
    out: BufWriter<File>,
}

impl JsonLines {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            out: BufWriter::new(file),
        })
    }

    pub fn write(&mut self, span: &Span) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, span)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

/// Spans exported and lost, per destination.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExportCounters {
    pub spans_written: u64,
    pub otlp: Option<otlp::OtlpCounters>,
}

/// Every configured destination of spans: an OTLP collector and/or a JSON-lines file; the
/// terminal when there is neither.
pub struct SpanSinks {
    file: Option<JsonLines>,
    otlp: Option<otlp::OtlpExporter>,
    spans_written: u64,
}

impl SpanSinks {
    pub fn new(output: Option<&Path>, otlp: Option<otlp::OtlpConfig>) -> anyhow::Result<Self> {
        Ok(Self {
            file: output.map(JsonLines::create).transpose()?,
            otlp: otlp.map(otlp::OtlpExporter::start).transpose()?,
            spans_written: 0,
        })
    }

    pub fn export(&mut self, span: Span) -> anyhow::Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.write(&span)?;
            self.spans_written += 1;
        }
        match &self.otlp {
            Some(otlp) => otlp.send(span),
            None if self.file.is_none() => println!("{}", span_line(&span)),
            None => {}
        }
        Ok(())
    }

    /// Writes buffered file output (the OTLP task batches on its own).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.flush()?;
        }
        Ok(())
    }

    pub fn counters(&self) -> ExportCounters {
        ExportCounters {
            spans_written: self.spans_written,
            otlp: self.otlp.as_ref().map(otlp::OtlpExporter::counters),
        }
    }

    /// Flushes everything, giving the collector at most `deadline`.
    pub async fn shutdown(
        mut self,
        deadline: std::time::Duration,
    ) -> anyhow::Result<ExportCounters> {
        self.flush()?;
        let otlp = match self.otlp.take() {
            Some(otlp) => Some(otlp.shutdown(deadline).await),
            None => None,
        };
        Ok(ExportCounters {
            spans_written: self.spans_written,
            otlp,
        })
    }
}
