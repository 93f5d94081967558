//! The decoder stage over all connections: one [`ConnectionDecoder`] per connection, fed by
//! stream events, emitting commands with the connection they travelled on.

use std::{collections::HashMap, net::SocketAddr};

use serde::Serialize;

use super::{
    Command, ConnectionDecoder, DecoderConfig, DecoderCounters,
    operation::{Operation, interpret},
};
use crate::{
    sources::{Connection, ConnectionId, Origin},
    streams::StreamEvent,
};

/// A command and where it was seen.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecodedCommand {
    pub connection: ConnectionId,
    pub pid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    #[serde(flatten)]
    pub command: Command,
    pub operation: Operation,
}

struct Tracked {
    connection: Connection,
    decoder: ConnectionDecoder,
}

#[derive(Default)]
pub struct Decoders {
    config: DecoderConfig,
    connections: HashMap<ConnectionId, Tracked>,
    /// Counters of connections that have closed, summed.
    closed: DecoderCounters,
    scratch: Vec<Command>,
}

impl Decoders {
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn push(&mut self, event: &StreamEvent, out: &mut Vec<DecodedCommand>) {
        self.scratch.clear();
        let id = match event {
            StreamEvent::Opened(connection) => {
                let decoder =
                    ConnectionDecoder::new(self.config, connection.origin == Origin::Existing);
                self.connections.insert(
                    connection.id,
                    Tracked {
                        connection: connection.clone(),
                        decoder,
                    },
                );
                return;
            }
            StreamEvent::Data {
                connection,
                direction,
                position,
                bytes,
                timestamp_ns,
            } => {
                if let Some(t) = self.connections.get_mut(connection) {
                    t.decoder.data(
                        *direction,
                        *position,
                        bytes,
                        *timestamp_ns,
                        &mut self.scratch,
                    );
                }
                *connection
            }
            StreamEvent::Gap {
                connection,
                direction,
                position,
                length,
            } => {
                if let Some(t) = self.connections.get_mut(connection) {
                    t.decoder
                        .gap(*direction, *position, *length, &mut self.scratch);
                }
                *connection
            }
            StreamEvent::Closed { connection, .. } => {
                if let Some(t) = self.connections.remove(connection) {
                    add(&mut self.closed, &t.decoder.counters);
                }
                return;
            }
        };
        let Some(t) = self.connections.get(&id) else {
            return;
        };
        for command in self.scratch.drain(..) {
            out.push(DecodedCommand {
                connection: id,
                pid: t.connection.pid,
                local: t.connection.local,
                peer: t.connection.peer,
                operation: interpret(&command),
                command,
            });
        }
    }

    /// Counters over all connections, open and closed.
    pub fn counters(&self) -> DecoderCounters {
        let mut total = self.closed.clone();
        for t in self.connections.values() {
            add(&mut total, &t.decoder.counters);
        }
        total
    }
}

fn add(total: &mut DecoderCounters, c: &DecoderCounters) {
    total.frames += c.frames;
    total.messages += c.messages;
    total.frames_lost += c.frames_lost;
    total.resyncs += c.resyncs;
    total.resync_bytes += c.resync_bytes;
    total.malformed_messages += c.malformed_messages;
    total.messages_dropped += c.messages_dropped;
    total.pending_evicted += c.pending_evicted;
}
