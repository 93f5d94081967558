//! Where spans go: a JSON-lines file, the terminal, an OTLP collector, RocketMQ's own trace
//! topic.

pub mod json;
pub mod otlp;
pub mod rocketmq_trace;

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::Context;

use crate::spans::{Span, span_line};

/// One JSON object per line per span, with the keys `--output` documents.
pub struct JsonLines {
    out: BufWriter<File>,
    json: json::SpanJson,
    /// The line being written, kept for the next.
    line: Vec<u8>,
}

impl JsonLines {
    /// A new file at `path` (an offline replay writes the spans of one capture).
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self::writing_to(file))
    }

    /// `path` opened for appending, created if missing: a daemon's restart keeps what the
    /// last run wrote.
    pub fn append(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {} to append spans", path.display()))?;
        Ok(Self::writing_to(file))
    }

    fn writing_to(file: File) -> Self {
        Self {
            // A batch of spans (64, 1.2 KiB each) per write: the default 8 KiB made ten
            // write syscalls of each.
            out: BufWriter::with_capacity(1 << 17, file),
            json: json::SpanJson::default(),
            line: Vec::new(),
        }
    }

    pub fn write(&mut self, span: &Span) -> anyhow::Result<()> {
        self.line.clear();
        self.json.write(&mut self.line, span);
        self.line.push(b'\n');
        self.out.write_all(&self.line)?;
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
    /// Spans the --output file did not take (a full disk, an I/O error): the daemon goes on.
    pub write_errors: u64,
    pub otlp: Option<otlp::OtlpCounters>,
    pub rocketmq_trace: Option<rocketmq_trace::RocketmqTraceCounters>,
}

/// Where spans go besides the file.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    pub otlp: Option<otlp::OtlpConfig>,
    pub rocketmq_trace: Option<rocketmq_trace::RocketmqTraceConfig>,
}

/// Every configured destination of spans: an OTLP collector, a JSON-lines file, RocketMQ's
/// trace topic; the terminal when there is neither file nor collector.
pub struct SpanSinks {
    file: Option<JsonLines>,
    otlp: Option<otlp::OtlpExporter>,
    rocketmq_trace: Option<rocketmq_trace::RocketmqTraceExporter>,
    spans_written: u64,
    write_errors: u64,
}

impl SpanSinks {
    /// Starts the exporters' tasks: must run inside a tokio runtime when there are any.
    pub fn new(output: Option<&Path>, destinations: Destinations) -> anyhow::Result<Self> {
        Ok(Self {
            file: output.map(JsonLines::append).transpose()?,
            otlp: destinations
                .otlp
                .map(otlp::OtlpExporter::start)
                .transpose()?,
            rocketmq_trace: destinations
                .rocketmq_trace
                .map(rocketmq_trace::RocketmqTraceExporter::start),
            spans_written: 0,
            write_errors: 0,
        })
    }

    /// Hands a span to every destination. A file that cannot be written is counted (and
    /// logged as a problem), never fatal: tracing goes on.
    pub fn export(&mut self, span: Span) {
        if let Some(file) = self.file.as_mut() {
            match file.write(&span) {
                Ok(()) => self.spans_written += 1,
                Err(_) => self.write_errors += 1,
            }
        }
        if let Some(rocketmq_trace) = self.rocketmq_trace.as_mut() {
            rocketmq_trace.send(&span);
        }
        match &self.otlp {
            Some(otlp) => otlp.send(span),
            None if self.file.is_none() && self.rocketmq_trace.is_none() => {
                println!("{}", span_line(&span))
            }
            None => {}
        }
    }

    /// Writes buffered file output (the OTLP task batches on its own); a failed write is
    /// counted, as in `export`.
    pub fn flush(&mut self) {
        if let Some(file) = self.file.as_mut()
            && file.flush().is_err()
        {
            self.write_errors += 1;
        }
    }

    pub fn counters(&self) -> ExportCounters {
        ExportCounters {
            spans_written: self.spans_written,
            write_errors: self.write_errors,
            otlp: self.otlp.as_ref().map(otlp::OtlpExporter::counters),
            rocketmq_trace: self
                .rocketmq_trace
                .as_ref()
                .map(rocketmq_trace::RocketmqTraceExporter::counters),
        }
    }

    /// Flushes everything, giving the collector at most `deadline`.
    pub async fn shutdown(
        mut self,
        deadline: std::time::Duration,
    ) -> anyhow::Result<ExportCounters> {
        self.flush();
        // Both within the one deadline.
        let otlp = async {
            match self.otlp.take() {
                Some(otlp) => Some(otlp.shutdown(deadline).await),
                None => None,
            }
        };
        let rocketmq_trace = async {
            match self.rocketmq_trace.take() {
                Some(exporter) => Some(exporter.shutdown(deadline).await),
                None => None,
            }
        };
        let (otlp, rocketmq_trace) = tokio::join!(otlp, rocketmq_trace);
        Ok(ExportCounters {
            spans_written: self.spans_written,
            write_errors: self.write_errors,
            otlp,
            rocketmq_trace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_appends_to_its_output_file() {
        let path = std::env::temp_dir().join(format!("mqtrace-append-{}", std::process::id()));
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let mut file = JsonLines::append(&path).unwrap();
        file.out.write_all(b"{}\n").unwrap();
        file.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, "{\"earlier\":true}\n{}\n");
    }

    #[test]
    fn a_file_that_cannot_be_written_is_counted_not_fatal() {
        // /dev/full: every write fails with ENOSPC, as on a full disk.
        use crate::spans::{
            SpanKind, Status,
            identity::{SpanId, TraceId},
        };
        let mut sinks =
            SpanSinks::new(Some(Path::new("/dev/full")), Destinations::default()).unwrap();
        let span = Span {
            trace_id: TraceId::for_message("A"),
            span_id: SpanId::for_send("A"),
            parent_span_id: None,
            name: "send T".into(),
            kind: SpanKind::Producer,
            start_unix_nano: 0,
            end_unix_nano: 0,
            status: Status::Unset,
            status_message: None,
            attributes: Default::default(),
            resource: Default::default(),
            links: Vec::new(),
        };
        // Buffered: errors show once the buffer is written out.
        for _ in 0..100 {
            sinks.export(span.clone());
        }
        sinks.flush();
        let counters = sinks.counters();
        assert!(counters.write_errors >= 1, "{counters:?}");
    }
}
