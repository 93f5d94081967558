//! Connections and their two byte streams, rebuilt in order from source chunks.
//!
//! Chunks carry their stream position, so this stage knows exactly which bytes it never saw:
//! it turns position jumps into gaps of known size, trims overlaps, and reports bytes missing at
//! the end of a stream when the connection closes. Memory is bounded: no payload is buffered
//! here, chunks pass through in order.

use std::collections::HashMap;

use bytes::Bytes;

use crate::sources::{Connection, ConnectionId, Direction, EndCause, Origin, SeenAs, SourceEvent};

/// Connections followed at once; beyond it new ones are counted and ignored.
pub const MAX_CONNECTIONS: usize = 131_072;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Opened(Connection),
    Data {
        connection: ConnectionId,
        direction: Direction,
        position: u64,
        bytes: Bytes,
        timestamp_ns: u64,
    },
    /// `length` bytes at `position` are missing from the stream.
    Gap {
        connection: ConnectionId,
        direction: Direction,
        position: u64,
        length: u64,
    },
    Closed {
        connection: ConnectionId,
        timestamp_ns: u64,
        cause: EndCause,
    },
}

/// What this stage had to drop or could not see.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamCounters {
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Bytes that arrived behind the stream's position (overlaps, late records) and were dropped.
    pub late_bytes: u64,
    pub connections_refused: u64,
}

struct ConnectionState {
    pid: u32,
    /// Next expected position per direction, indexed by `Direction as usize`.
    next: [u64; 2],
}

#[derive(Default)]
pub struct Streams {
    connections: HashMap<ConnectionId, ConnectionState>,
    pub counters: StreamCounters,
}

impl Streams {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    pub fn push(&mut self, event: SourceEvent, out: &mut Vec<StreamEvent>) {
        match event {
            SourceEvent::Opened(connection) => {
                if self.connections.len() >= MAX_CONNECTIONS
                    && !self.connections.contains_key(&connection.id)
                {
                    self.counters.connections_refused += 1;
                    return;
                }
                self.connections.insert(
                    connection.id,
                    ConnectionState {
                        pid: connection.pid,
                        next: [0, 0],
                    },
                );
                out.push(StreamEvent::Opened(connection));
            }
            SourceEvent::Data(chunk) => {
                let length = chunk.bytes.len() as u64;
                let Some(skip) = self.advance(
                    chunk.connection,
                    chunk.direction,
                    chunk.position,
                    length,
                    out,
                ) else {
                    return;
                };
                out.push(StreamEvent::Data {
                    connection: chunk.connection,
                    direction: chunk.direction,
                    position: chunk.position + skip,
                    bytes: chunk.bytes.slice(skip as usize..),
                    timestamp_ns: chunk.timestamp_ns,
                });
            }
            SourceEvent::Gap {
                connection,
                direction,
                position,
                length,
            } => {
                let Some(skip) = self.advance(connection, direction, position, length, out) else {
                    return;
                };
                self.gap(connection, direction, position + skip, length - skip, out);
            }
            SourceEvent::Closed {
                connection,
                final_positions,
                timestamp_ns,
                cause,
            } => self.close(connection, final_positions, timestamp_ns, cause, out),
            SourceEvent::ProcessStarted { .. } | SourceEvent::RecordsLost { .. } => {}
            SourceEvent::ProcessExited { pid } => {
                let ids: Vec<ConnectionId> = self
                    .connections
                    .iter()
                    .filter(|(_, state)| state.pid == pid)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.close(id, None, 0, EndCause::Closed, out);
                }
            }
        }
    }

    /// Moves the stream past `[position, position + length)`, reporting any jump as a gap.
    /// Returns how many leading bytes were already behind the stream, or None when all were.
    fn advance(
        &mut self,
        connection: ConnectionId,
        direction: Direction,
        position: u64,
        length: u64,
        out: &mut Vec<StreamEvent>,
    ) -> Option<u64> {
        let next = self.state(connection, out)?.next[direction as usize];
        let end = position + length;
        if end <= next {
            self.counters.late_bytes += length;
            return None;
        }
        let skip = next.saturating_sub(position);
        self.counters.late_bytes += skip;
        if position > next {
            self.gap(connection, direction, next, position - next, out);
        }
        self.connections.get_mut(&connection)?.next[direction as usize] = end;
        Some(skip)
    }

    /// The connection's state, created for a connection whose opening was never seen (its
    /// record was lost, or a capture began after it).
    fn state(
        &mut self,
        id: ConnectionId,
        out: &mut Vec<StreamEvent>,
    ) -> Option<&mut ConnectionState> {
        if !self.connections.contains_key(&id) {
            if self.connections.len() >= MAX_CONNECTIONS {
                self.counters.connections_refused += 1;
                return None;
            }
            self.connections.insert(
                id,
                ConnectionState {
                    pid: 0,
                    next: [0, 0],
                },
            );
            out.push(StreamEvent::Opened(Connection {
                id,
                pid: 0,
                fd: -1,
                origin: Origin::Existing,
                local: None,
                peer: None,
                timestamp_ns: 0,
                seen_as: SeenAs::Plain,
            }));
        }
        self.connections.get_mut(&id)
    }

    fn gap(
        &mut self,
        connection: ConnectionId,
        direction: Direction,
        position: u64,
        length: u64,
        out: &mut Vec<StreamEvent>,
    ) {
        self.counters.gaps += 1;
        self.counters.gap_bytes += length;
        out.push(StreamEvent::Gap {
            connection,
            direction,
            position,
            length,
        });
    }

    fn close(
        &mut self,
        id: ConnectionId,
        final_positions: Option<[u64; 2]>,
        timestamp_ns: u64,
        cause: EndCause,
        out: &mut Vec<StreamEvent>,
    ) {
        let Some(state) = self.connections.remove(&id) else {
            return;
        };
        if let Some(finals) = final_positions {
            for direction in [Direction::Egress, Direction::Ingress] {
                let seen = state.next[direction as usize];
                if finals[direction as usize] > seen {
                    self.gap(id, direction, seen, finals[direction as usize] - seen, out);
                }
            }
        }
        out.push(StreamEvent::Closed {
            connection: id,
            timestamp_ns,
            cause,
        });
    }
}

#[cfg(test)]
mod tests;
