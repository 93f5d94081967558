//! Wiring of the stages: source events in, decoded commands and spans out. The kernel capture
//! and the pcap replay both feed it; only their clocks differ.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    correlation::{
        CorrelationCounters, CorrelationMemory, Correlator, DEFAULT_TIMEOUT_NS, MessageEvent,
        Unseen, lag::QueueLag,
    },
    decoder::{DecodedCommand, DecoderConfig, DecoderCounters, Decoders},
    journeys::{DEFAULT_MAX_MESSAGES, Journal, JournalCounters},
    memory::Shares,
    sources::{Connection, SourceEvent, pcap},
    spans::{
        Resource, Span,
        resource::{CaptureResources, ProcessResources},
        span,
    },
    streams::{StreamCounters, StreamEvent, Streams},
};

/// What the pipeline produces.
#[derive(Clone, Debug)]
pub enum Output {
    Command(Box<DecodedCommand>),
    Span(Box<Span>),
    /// A message event with its process's resource, for a span stage running apart (see
    /// `Pipeline::detach_spans`).
    Event(Box<MessageEvent>, Resource),
}

/// The last stage: message events become spans, and each is kept in the journal ("where is
/// my message?"). Inline by default; the daemon runs it on a thread of its own.
pub struct SpanStage {
    /// The recent messages and their steps.
    pub journal: Journal,
    spans: u64,
}

impl SpanStage {
    pub fn new(journal: Journal) -> Self {
        Self { journal, spans: 0 }
    }

    /// The event's span, recorded in the journal.
    pub fn make(&mut self, event: MessageEvent, resource: &Resource) -> Span {
        self.spans += 1;
        let span = span(&event, resource);
        self.journal.record(event, &span);
        span
    }

    /// Spans made so far.
    pub fn spans(&self) -> u64 {
        self.spans
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryHeld {
    /// By the connections' decoders: headers and fields being collected.
    pub stream_bytes: u64,
    #[serde(flatten)]
    pub correlation: CorrelationMemory,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PipelineCounters {
    pub streams: StreamCounters,
    pub decoder: DecoderCounters,
    pub correlation: CorrelationCounters,
    /// Bytes held against the shares of the memory budget (gauges).
    pub memory: MemoryHeld,
    /// Requests sent and not answered yet (a gauge).
    pub requests_waiting: u64,
    pub connections_not_rocketmq: u64,
    /// Of those, connections that began with a TLS ClientHello: encrypted, not traced (RocketMQ
    /// clients with TLS on among them).
    pub connections_tls: u64,
    /// Connections on which the traced process is the broker (or a proxy or relay): decoded
    /// for the broker's spans, or (with --no-broker-spans) no longer decoded nor copied.
    pub connections_server_side: u64,
    /// Traced processes seen accepting RocketMQ connections (brokers, proxies, relays).
    pub serving_processes: u64,
    pub spans: u64,
    pub journal: JournalCounters,
    /// Per consumer group and queue: messages stored, not yet committed (gauges, labelled).
    pub consumer_lag: Vec<QueueLag>,
}

/// Processes that accept RocketMQ connections (brokers, proxies, relays) and those among them
/// seen forwarding what their clients send, by pid: what an agent handing over tells the
/// newer one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingProcesses {
    pub serving: Vec<u32>,
    pub forwarding: Vec<u32>,
}

pub struct Pipeline {
    streams: Streams,
    decoders: Decoders,
    correlator: Correlator,
    resources: Box<dyn ProcessResources>,
    /// Whether to output decoded commands too (they cost a clone each).
    pub emit_commands: bool,
    /// Spans made here; None once detached (message events are then output instead).
    stage: Option<SpanStage>,
    stream_events: Vec<StreamEvent>,
    commands: Vec<DecodedCommand>,
    events: Vec<MessageEvent>,
}

impl Pipeline {
    /// `clock_offset_ns` turns source timestamps into Unix time (0 when they already are);
    /// `resources` names the processes events belong to.
    pub fn new(
        config: DecoderConfig,
        clock_offset_ns: i64,
        resources: impl ProcessResources + 'static,
    ) -> Self {
        Self::with_request_timeout(config, clock_offset_ns, resources, DEFAULT_TIMEOUT_NS)
    }

    /// As `new`, ending requests unanswered after `request_timeout_ns` as errors.
    pub fn with_request_timeout(
        config: DecoderConfig,
        clock_offset_ns: i64,
        resources: impl ProcessResources + 'static,
        request_timeout_ns: u64,
    ) -> Self {
        Self {
            streams: Streams::new(),
            decoders: Decoders::new(config),
            correlator: Correlator::new(clock_offset_ns, request_timeout_ns),
            resources: Box::new(resources),
            emit_commands: false,
            stage: Some(SpanStage::new(Journal::new(DEFAULT_MAX_MESSAGES))),
            stream_events: Vec::new(),
            commands: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn push(&mut self, event: SourceEvent, out: &mut Vec<Output>) {
        match &event {
            SourceEvent::ProcessExited { pid } => {
                self.resources.forget(*pid);
                self.decoders.forget_process(*pid);
                self.correlator.forget_process(*pid);
            }
            // Read the process's resource while it surely runs: a short-lived client may be
            // gone (its environment with it) by the time its first span is made. At exec its
            // program, and so its resource, is new.
            SourceEvent::ProcessStarted { pid } => {
                self.resources.forget(*pid);
                self.resources.of(*pid);
            }
            SourceEvent::Opened(connection) => {
                self.resources.of(connection.pid);
            }
            // In order: the commands decoded so far came before the loss.
            SourceEvent::RecordsLost { total } => self.correlator.records_lost_before(*total),
            _ => {}
        }
        self.streams.push(event, &mut self.stream_events);
        // One stream event at a time through decoder and correlator: a gap or an end reaches
        // the correlator after the commands before it and before those after it.
        let mut stream_events = std::mem::take(&mut self.stream_events);
        for event in stream_events.drain(..) {
            self.decoders.push(&event, &mut self.commands);
            self.correlate_commands(out);
            match event {
                StreamEvent::Gap {
                    connection,
                    direction,
                    ..
                } => self.correlator.gap(connection, direction),
                StreamEvent::Closed {
                    connection, cause, ..
                } => self.correlator.ended(connection, cause, &mut self.events),
                _ => {}
            }
        }
        // The vector goes back, for its allocation.
        self.stream_events = stream_events;
        self.flush_events(out);
    }

    /// Keeps what the pipeline holds within these shares of the memory budget (`journal`
    /// keeps at most `journal_messages` too).
    pub fn set_memory(&mut self, shares: &Shares, journal_messages: usize) {
        self.decoders.set_memory(shares.streams);
        self.correlator.set_memory(shares);
        if let Some(stage) = &mut self.stage {
            stage.journal = Journal::with_budget(journal_messages, shares.journal);
        }
    }

    /// Takes the span stage out, to run elsewhere: `push` and the rest then output
    /// `Output::Event`s, and the counters' spans and journal are the stage's to tell.
    pub fn detach_spans(&mut self) -> Option<SpanStage> {
        self.stage.take()
    }

    /// The journal of the span stage run here (None once detached).
    pub fn journal(&self) -> Option<&Journal> {
        self.stage.as_ref().map(|stage| &stage.journal)
    }

    /// The capture has lost `total` records so far (ring buffer full): requests waiting now
    /// may never show their response, and are not taken for unanswered.
    pub fn capture_lost(&mut self, total: u64) {
        self.correlator.capture_lost(total);
    }

    /// Another agent traced requests made before `from_ns` (the sources' clock): their events
    /// are its own (see [`Correlator::take_over_at`](crate::correlation::Correlator)).
    pub fn take_over_at(&mut self, from_ns: u64) {
        self.correlator.take_over_at(from_ns);
    }

    /// Another agent traces requests made from `from_ns` on.
    pub fn hand_over_at(&mut self, from_ns: u64) {
        self.correlator.hand_over_at(from_ns);
    }

    /// The agent this one handed over to is gone: requests made from `from_ns` on are this
    /// one's again.
    pub fn take_back_at(&mut self, from_ns: u64) {
        self.correlator.take_back_at(from_ns);
    }

    /// Whether the agent this one took over from still runs (it settles the messages it saw
    /// received).
    pub fn set_predecessor_running(&mut self, running: bool) {
        self.correlator.set_predecessor_running(running);
    }

    /// Requests waiting whose events are this agent's to make.
    pub fn waiting_owned(&self) -> usize {
        self.correlator.waiting_owned()
    }

    /// The servers and forwarders among the processes seen.
    pub fn serving_processes(&self) -> ServingProcesses {
        ServingProcesses {
            serving: self.decoders.serving_pids(),
            forwarding: self.correlator.forwarding_pids(),
        }
    }

    /// What another agent learnt of the processes' roles: this one would learn it only from
    /// the traffic it sees, and take a proxy's requests for a client's meanwhile.
    pub fn learn_serving_processes(&mut self, known: &ServingProcesses) {
        self.decoders.learn_serving(&known.serving);
        self.correlator.learn_forwarding(&known.forwarding);
    }

    /// What turns source timestamps into Unix time from now on: the wall clock is stepped and
    /// slewed (NTP) while the monotonic clock of the records is not, so a live capture renews it.
    pub fn set_clock_offset(&mut self, clock_offset_ns: i64) {
        self.correlator.set_clock_offset(clock_offset_ns);
    }

    /// Ends requests that waited past their timeout, by the sources' clock.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        self.correlator.expire(now_ns, &mut self.events);
        self.flush_events(out);
    }

    /// Ends everything still waiting: the source is done (`reason`: the agent stopped, or the
    /// capture ended).
    pub fn finish(&mut self, reason: Unseen, out: &mut Vec<Output>) {
        self.decoders.finish(&mut self.commands);
        self.correlate_commands(out);
        self.correlator.finish(reason, &mut self.events);
        self.flush_events(out);
    }

    /// Hands the decoded commands to the correlator (and to `out`, when commands are asked
    /// for).
    fn correlate_commands(&mut self, out: &mut Vec<Output>) {
        for command in self.commands.drain(..) {
            if self.emit_commands {
                out.push(Output::Command(Box::new(command.clone())));
            }
            self.correlator.push(command, &mut self.events);
        }
    }

    fn flush_events(&mut self, out: &mut Vec<Output>) {
        for event in self.events.drain(..) {
            let resource = self.resources.of(event.endpoint().pid);
            out.push(match &mut self.stage {
                Some(stage) => Output::Span(Box::new(stage.make(event, resource))),
                None => Output::Event(Box::new(event), resource.clone()),
            });
        }
    }

    /// Connections found not to be RocketMQ since the last call.
    pub fn take_rejected(&mut self) -> Vec<Connection> {
        self.decoders.take_rejected()
    }

    pub fn counters(&self) -> PipelineCounters {
        PipelineCounters {
            streams: self.streams.counters.clone(),
            decoder: self.decoders.counters(),
            correlation: self.correlator.counters(),
            memory: MemoryHeld {
                stream_bytes: self.decoders.held_bytes() as u64,
                correlation: self.correlator.memory(),
            },
            requests_waiting: self.correlator.waiting() as u64,
            connections_not_rocketmq: self.decoders.connections_rejected,
            connections_tls: self.decoders.connections_tls,
            connections_server_side: self.decoders.connections_server_side,
            serving_processes: self.decoders.serving_processes() as u64,
            spans: self.stage.as_ref().map_or(0, SpanStage::spans),
            journal: self
                .stage
                .as_ref()
                .map(|stage| stage.journal.counters())
                .unwrap_or_default(),
            consumer_lag: self.correlator.lags(),
        }
    }
}

/// Runs a capture file through the whole pipeline, handing every output to `sink`; returns the
/// finished pipeline (its counters and journal).
pub fn replay_capture(
    file: &Path,
    config: DecoderConfig,
    emit_commands: bool,
    mut sink: impl FnMut(Output),
) -> anyhow::Result<(pcap::PcapCounters, Pipeline)> {
    let mut pipeline = Pipeline::new(config, 0, CaptureResources::new(file));
    pipeline.emit_commands = emit_commands;
    let mut out = Vec::new();
    let counters = pcap::replay(file, |event| {
        pipeline.push(event, &mut out);
        out.drain(..).for_each(&mut sink);
    })?;
    pipeline.finish(Unseen::CaptureEnded, &mut out);
    out.drain(..).for_each(&mut sink);
    Ok((counters, pipeline))
}

/// Decoded commands of a capture file, for tests and `replay --commands`.
pub fn decode_capture(
    file: &Path,
    config: DecoderConfig,
    mut sink: impl FnMut(&DecodedCommand),
) -> anyhow::Result<PipelineCounters> {
    let (_, pipeline) = replay_capture(file, config, true, |output| {
        if let Output::Command(command) = output {
            sink(&command);
        }
    })?;
    Ok(pipeline.counters())
}
