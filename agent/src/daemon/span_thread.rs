//! The span stage and the span sinks on a thread of their own. At high rates building spans,
//! keeping the journal and writing spans out is about half the work of the pipeline thread
//! (`perf`, 20,000 sends/s); here it runs beside decoding and correlation, on another core.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread::JoinHandle,
};

use anyhow::Context;

use crate::{
    correlation::MessageEvent,
    exporters::{ExportCounters, SpanSinks},
    journeys::{JournalCounters, Journey, Query},
    pipeline::SpanStage,
    spans::Resource,
};

/// Message events with their process's resource, as the pipeline thread hands them over.
pub type Batch = Vec<(Box<MessageEvent>, Resource)>;

/// Events per batch handed over at most, and batches in flight at most: when the span thread
/// is this far behind (2,048 events), the pipeline thread waits for it, and the kernel's ring
/// buffer takes the slack (losing records countably when full) rather than the heap without
/// bound (a poll of the ring can yield 4,096 records, each pull response 32 events).
const EVENTS_PER_BATCH: usize = 64;
const BATCHES_IN_FLIGHT: usize = 32;

struct Shared {
    stage: SpanStage,
    sinks: SpanSinks,
}

pub struct SpanThread {
    batches: Option<SyncSender<Batch>>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
}

impl SpanThread {
    pub fn spawn(stage: SpanStage, sinks: SpanSinks) -> anyhow::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared { stage, sinks }));
        let (batches, received) = sync_channel(BATCHES_IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("mqtrace-spans".into())
            .spawn({
                let shared = shared.clone();
                move || run(&received, &shared)
            })
            .context("starting the span thread")?;
        Ok(Self {
            batches: Some(batches),
            shared,
            thread: Some(thread),
        })
    }

    /// Hands events over, in batches of EVENTS_PER_BATCH; waits while BATCHES_IN_FLIGHT are
    /// queued.
    pub fn send(&self, events: impl IntoIterator<Item = (Box<MessageEvent>, Resource)>) {
        let Some(batches) = &self.batches else {
            return;
        };
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let batch: Batch = events.by_ref().take(EVENTS_PER_BATCH).collect();
            // Fails only when the thread is gone (it panicked): its spans are lost either way.
            let _ = batches.send(batch);
        }
    }

    pub fn journeys(&self, query: &Query) -> Vec<Journey> {
        self.lock().stage.journal.query(query)
    }

    /// Spans made, the journal's counters, and the sinks'.
    pub fn counters(&self) -> (u64, JournalCounters, ExportCounters) {
        let shared = self.lock();
        (
            shared.stage.spans(),
            shared.stage.journal.counters(),
            shared.sinks.counters(),
        )
    }

    /// Waits until every batch sent is made into spans and written out; batches sent later
    /// are dropped.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        drop(self.batches.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => anyhow::bail!("the span thread panicked"),
            _ => Ok(()),
        }
    }

    /// The sinks, to be shut down (flushed) once the thread is finished.
    pub fn into_sinks(mut self) -> anyhow::Result<SpanSinks> {
        self.finish()?;
        let shared = Arc::try_unwrap(self.shared)
            .map_err(|_| anyhow::anyhow!("the span thread's state is still shared"))?;
        Ok(shared
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .sinks)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic on the span thread leaves state that is still whole enough to read.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(received: &Receiver<Batch>, shared: &Mutex<Shared>) {
    while let Ok(batch) = received.recv() {
        let mut shared = lock(shared);
        let Shared { stage, sinks } = &mut *shared;
        // What waits now too, then one write of the file: a write per batch would be one per
        // EVENTS_PER_BATCH spans.
        for batch in std::iter::once(batch).chain(received.try_iter()) {
            for (event, resource) in batch {
                sinks.export(stage.make(*event, &resource));
            }
        }
        sinks.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        correlation::Unseen,
        decoder::DecoderConfig,
        pipeline::{Output, Pipeline, replay_capture},
        sources::pcap,
        spans::resource::CaptureResources,
    };

    /// A real capture's spans and journal are the same made on the span thread as inline.
    #[test]
    fn the_span_thread_makes_what_the_pipeline_makes_inline() {
        let capture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/captures/rust-client/roundtrip.pcap");
        let mut inline = Vec::new();
        let (_, inline_pipeline) = replay_capture(&capture, DecoderConfig::default(), false, |o| {
            if let Output::Span(span) = o {
                inline.push(serde_json::to_string(&span).unwrap());
            }
        })
        .unwrap();

        let output =
            std::env::temp_dir().join(format!("mqtrace-span-thread-{}", std::process::id()));
        let _ = std::fs::remove_file(&output);
        let mut pipeline =
            Pipeline::new(DecoderConfig::default(), 0, CaptureResources::new(&capture));
        let stage = pipeline.detach_spans().unwrap();
        assert!(pipeline.detach_spans().is_none(), "taken once");
        let mut thread = SpanThread::spawn(
            stage,
            SpanSinks::new(Some(&output), Default::default()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        let hand_over = |out: &mut Vec<Output>| {
            thread.send(out.drain(..).map(|o| match o {
                Output::Event(event, resource) => (event, resource),
                other => panic!("a detached pipeline makes no spans: {other:?}"),
            }));
        };
        pcap::replay(&capture, |event| {
            pipeline.push(event, &mut out);
            hand_over(&mut out);
        })
        .unwrap();
        pipeline.finish(Unseen::CaptureEnded, &mut out);
        hand_over(&mut out);
        thread.finish().unwrap();

        let (spans, journal, export) = thread.counters();
        let everything = Query::default();
        assert_eq!(
            thread.journeys(&everything),
            inline_pipeline.journal().unwrap().query(&everything)
        );
        // Every span is written out by now: the thread flushes the file after each batch.
        thread.into_sinks().unwrap();
        let written = std::fs::read_to_string(&output).unwrap();
        let _ = std::fs::remove_file(&output);
        let written: Vec<&str> = written.lines().collect();
        assert!(inline.len() >= 2, "{inline:?}");
        assert_eq!(written, inline);
        assert_eq!(spans, inline.len() as u64);
        assert_eq!(export.spans_written, inline.len() as u64);
        assert_eq!(
            journal.messages,
            inline_pipeline.counters().journal.messages
        );
        // The detached pipeline counts none itself.
        assert_eq!(pipeline.counters().spans, 0);
    }
}
