//! Decoding of ring-buffer records into [`SourceEvent`]s. Pure: unit-tested without a kernel.

use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ptr,
};

use bytes::Bytes;
use mqtrace_common::{
    CIPHERTEXT_PREFIX, ConnectionClosed, ConnectionOpened, DataHeader, Direction,
    Origin as KernelOrigin, ProcessRecord, RecordKind, TlsCiphertext,
};

use crate::sources::{
    Chunk, Connection, ConnectionId, EndCause, Origin, SeenAs, SourceEvent,
    tls::{Placed, TlsRecord},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("ring-buffer record of {0} bytes is too short")]
    Truncated(usize),
    #[error("ring-buffer record has unknown kind {0}")]
    UnknownKind(u32),
}

/// Reads a `T` from the start of `bytes`, which must be long enough.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, RecordError> {
    if bytes.len() < size_of::<T>() {
        return Err(RecordError::Truncated(bytes.len()));
    }
    // SAFETY: length checked; T is a repr(C) plain-data type from mqtrace-common.
    Ok(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// What records say besides source events: TLS libraries' records, placed among the events,
/// and the processes that mapped an executable file.
#[derive(Debug, Default)]
pub struct SideRecords {
    pub tls: Vec<Placed>,
    pub mapped: Vec<u32>,
    /// Processes stopped at exec until probed, with when they were stopped.
    pub held: Vec<(u32, u64)>,
    /// The ring's lost records, as the records read so far carry the count.
    pub lost: LostRecords,
}

/// The ring's lost-record count as data and close records carry it (its low bits), made whole
/// again: a rise says records went missing just before the record that shows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LostRecords {
    total: u64,
}

impl LostRecords {
    /// Notes the count a record carries, `bits` wide, and says a rise since the records before
    /// with a `RecordsLost` event. A count a little behind (a record from another CPU that read
    /// it just before a loss, and reached the ring just after) changes nothing.
    fn note(&mut self, low: u64, bits: u32, out: &mut Vec<SourceEvent>) {
        const BEHIND: u64 = 1024;
        let mask = (1u64 << bits) - 1;
        let rise = low.wrapping_sub(self.total) & mask;
        if rise == 0 || rise > mask - BEHIND {
            return;
        }
        self.total += rise;
        out.push(SourceEvent::RecordsLost { total: self.total });
    }
}

/// Appends the events one record stands for (TLS records and mappings to `side`).
/// `max_bytes_per_syscall` is the cap the kernel was given: with it the last record of a
/// capped syscall also reports the bytes left out.
pub fn decode(
    record: &[u8],
    max_bytes_per_syscall: u64,
    out: &mut Vec<SourceEvent>,
    side: &mut SideRecords,
) -> Result<(), RecordError> {
    let kind: u32 = read(record)?;
    match kind {
        k if k == RecordKind::Data as u32 => {
            let header: DataHeader = read(record)?;
            side.lost.note(u64::from(header.records_lost), 16, out);
            data_events(record, max_bytes_per_syscall, &mut |event| out.push(event))?;
        }
        k if k == RecordKind::TlsData as u32 => {
            let header: DataHeader = read(record)?;
            side.lost.note(u64::from(header.records_lost), 16, out);
            let before = out.len();
            data_events(record, max_bytes_per_syscall, &mut |event| {
                side.tls.push(Placed {
                    before,
                    record: TlsRecord::Plaintext {
                        pid: header.pid,
                        ssl: header.connection_id,
                        event,
                    },
                })
            })?;
        }
        k if k == RecordKind::TlsCiphertext as u32 => {
            let ciphertext: TlsCiphertext = read(record)?;
            let length = (ciphertext.prefix_len as usize).min(CIPHERTEXT_PREFIX);
            side.tls.push(Placed {
                before: out.len(),
                record: TlsRecord::Ciphertext {
                    pid: ciphertext.pid,
                    ssl: ciphertext.ssl,
                    prefix: Bytes::copy_from_slice(&ciphertext.prefix[..length]),
                },
            });
        }
        k if k == RecordKind::LibraryMapped as u32 => {
            let mapped: ProcessRecord = read(record)?;
            side.mapped.push(mapped.pid);
            if mapped.exec != 0 {
                out.push(SourceEvent::ProcessStarted { pid: mapped.pid });
            }
            if mapped.held != 0 {
                side.held.push((mapped.pid, mapped.timestamp_ns));
            }
        }
        k if k == RecordKind::ConnectionOpened as u32 => {
            let opened: ConnectionOpened = read(record)?;
            let ip = match opened.family {
                AF_INET => {
                    let mut v4 = [0u8; 4];
                    v4.copy_from_slice(&opened.peer_addr[..4]);
                    Some(IpAddr::V4(Ipv4Addr::from(v4)))
                }
                AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(opened.peer_addr))),
                _ => None,
            };
            out.push(SourceEvent::Opened(Connection {
                id: ConnectionId(opened.connection_id),
                pid: opened.pid,
                fd: opened.fd,
                origin: if opened.origin == KernelOrigin::Accept as u8 {
                    Origin::Accept
                } else {
                    Origin::Connect
                },
                local: None,
                peer: ip.map(|ip| SocketAddr::new(ip, opened.peer_port)),
                timestamp_ns: opened.timestamp_ns,
                seen_as: SeenAs::Plain,
            }));
        }
        k if k == RecordKind::ConnectionClosed as u32 => {
            let closed: ConnectionClosed = read(record)?;
            side.lost.note(u64::from(closed.records_lost), 32, out);
            out.push(SourceEvent::Closed {
                connection: ConnectionId(closed.connection_id),
                final_positions: Some([closed.egress_pos, closed.ingress_pos]),
                timestamp_ns: closed.timestamp_ns,
                cause: EndCause::Closed,
            });
        }
        k if k == RecordKind::ProcessExited as u32 => {
            let exited: ProcessRecord = read(record)?;
            out.push(SourceEvent::ProcessExited { pid: exited.pid });
        }
        other => return Err(RecordError::UnknownKind(other)),
    }
    Ok(())
}

/// The events of a data record (a socket's, or a TLS library's plaintext): its bytes, and the
/// gap of a capped syscall's bytes left out after the last one copied.
fn data_events(
    record: &[u8],
    max_bytes_per_syscall: u64,
    push: &mut impl FnMut(SourceEvent),
) -> Result<(), RecordError> {
    let header: DataHeader = read(record)?;
    let payload = &record[size_of::<DataHeader>()..];
    let copied = header.copied_len as usize;
    if payload.len() < copied {
        return Err(RecordError::Truncated(record.len()));
    }
    let direction = if header.direction == Direction::Egress as u8 {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    let connection = ConnectionId(header.connection_id);
    push(SourceEvent::Data(Chunk {
        connection,
        direction,
        position: header.syscall_pos + header.chunk_offset,
        bytes: Bytes::copy_from_slice(&payload[..copied]),
        timestamp_ns: header.timestamp_ns,
    }));
    let copy_target = header.syscall_len.min(max_bytes_per_syscall);
    if header.chunk_offset + copied as u64 == copy_target && copy_target < header.syscall_len {
        push(SourceEvent::Gap {
            connection,
            direction,
            position: header.syscall_pos + copy_target,
            length: header.syscall_len - copy_target,
        });
    }
    Ok(())
}

/// A record as the kernel programs write it: the plain bytes of `record`, then `payload`.
#[cfg(test)]
pub(crate) fn encoded<R: Copy>(record: &R, payload: &[u8]) -> Vec<u8> {
    // SAFETY: the record layouts of mqtrace-common are repr(C) plain data without padding.
    let bytes =
        unsafe { std::slice::from_raw_parts((record as *const R).cast::<u8>(), size_of::<R>()) };
    [bytes, payload].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_record(
        syscall_pos: u64,
        syscall_len: u64,
        chunk_offset: u64,
        payload: &[u8],
    ) -> Vec<u8> {
        let header = DataHeader {
            kind: RecordKind::Data as u32,
            direction: Direction::Ingress as u8,
            syscall: mqtrace_common::Syscall::Read as u8,
            records_lost: 0,
            timestamp_ns: 7,
            connection_id: 3,
            pid: 10,
            tid: 11,
            fd: 4,
            copied_len: payload.len() as u32,
            syscall_len,
            syscall_pos,
            chunk_offset,
        };
        encoded(&header, payload)
    }

    #[test]
    fn data_record_places_bytes_at_stream_position() {
        let mut out = Vec::new();
        decode(
            &data_record(100, 5, 0, b"hello"),
            1024,
            &mut out,
            &mut SideRecords::default(),
        )
        .unwrap();
        assert_eq!(
            out,
            vec![SourceEvent::Data(Chunk {
                connection: ConnectionId(3),
                direction: Direction::Ingress,
                position: 100,
                bytes: Bytes::from_static(b"hello"),
                timestamp_ns: 7,
            })]
        );
    }

    #[test]
    fn last_record_of_a_capped_syscall_reports_the_gap() {
        let mut out = Vec::new();
        // 10 bytes moved, cap 4: the record covering [0,4) is the last one copied.
        decode(
            &data_record(50, 10, 0, b"abcd"),
            4,
            &mut out,
            &mut SideRecords::default(),
        )
        .unwrap();
        assert_eq!(
            out[1],
            SourceEvent::Gap {
                connection: ConnectionId(3),
                direction: Direction::Ingress,
                position: 54,
                length: 6
            }
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let mut out = Vec::new();
        assert_eq!(
            decode(&[1, 0], 4, &mut out, &mut SideRecords::default()),
            Err(RecordError::Truncated(2))
        );
        assert_eq!(
            decode(&[9, 0, 0, 0], 4, &mut out, &mut SideRecords::default()),
            Err(RecordError::UnknownKind(9))
        );
        let mut short_payload = data_record(0, 5, 0, b"hello");
        short_payload.truncate(short_payload.len() - 1);
        assert!(decode(&short_payload, 4, &mut out, &mut SideRecords::default()).is_err());
        assert!(out.is_empty());
    }

    /// The lost-record count carried by records, made whole: each rise said once, in order,
    /// across the 16-bit wrap; a count behind (another CPU's record) says nothing.
    #[test]
    fn lost_records_are_said_where_the_count_rises() {
        let mut lost = LostRecords::default();
        let mut out = Vec::new();
        let counts = [
            (0, 16),
            (2, 16),
            (2, 32),
            (1, 16),
            (0x7000, 16),
            (0xe000, 16),
            (0xfff0, 16),
            (0xffe0, 16),
        ];
        for (low, bits) in counts {
            lost.note(low, bits, &mut out);
        }
        // Over 2^16: the low bits wrap.
        lost.note(3, 16, &mut out);
        lost.note(0x1_0004, 32, &mut out);
        let totals: Vec<u64> = out
            .iter()
            .map(|event| match event {
                SourceEvent::RecordsLost { total } => *total,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(totals, [2, 0x7000, 0xe000, 0xfff0, 0x1_0003, 0x1_0004]);
    }
}
