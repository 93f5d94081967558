//! Where spans go: a JSON-lines file, the terminal, an OTLP collector.

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

/// One readable line per span on stdout.
pub fn print(span: &Span) {
    println!("{}", span_line(span));
}
