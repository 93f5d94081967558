//! The offline source: a pcap or pcapng file, as `tcpdump -w` writes it. TCP segments are put
//! back in order per connection and direction; what never arrived becomes a gap of known size.
//!
//! Roles: the side that sent the SYN is the client. Without a SYN in the file, the side with
//! the higher port is taken as the client (brokers and name servers listen on low ports), and
//! the streams start mid-way.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::BufReader,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

use super::{Chunk, Connection, ConnectionId, Direction, EndCause, Origin, SeenAs, SourceEvent};

/// Out-of-order bytes held per direction at most before the hole is declared a gap.
const MAX_HELD_BYTES: usize = 8 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PcapCounters {
    pub packets: u64,
    pub tcp_segments: u64,
    pub not_tcp: u64,
    pub unparsable: u64,
    pub retransmitted_bytes: u64,
}

#[derive(Default)]
struct Flow {
    /// Sequence number of stream position 0.
    base: Option<u32>,
    /// Last position computed, to unwrap 32-bit sequence numbers.
    last: u64,
    next: u64,
    /// Segments ahead of `next`, with their own capture time.
    held: BTreeMap<u64, (Bytes, u64)>,
    held_bytes: usize,
    fin: bool,
}

struct Tcp {
    id: ConnectionId,
    client: SocketAddr,
    flows: [Flow; 2],
}

/// Reassembles the TCP connections of a capture into source events.
#[derive(Default)]
pub struct TcpReassembler {
    connections: HashMap<(SocketAddr, SocketAddr), Tcp>,
    next_id: u64,
    /// The latest capture time seen: when the capture ends.
    last_timestamp_ns: u64,
    pub counters: PcapCounters,
}

/// A TCP segment taken out of a packet.
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub syn: bool,
    pub ack_flag: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
    pub timestamp_ns: u64,
}

fn canonical(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Flow {
    /// The stream position of sequence number `seq`, unwrapped around the last one seen.
    fn position(&mut self, seq: u32) -> u64 {
        let base = *self.base.get_or_insert(seq);
        let rel = u64::from(seq.wrapping_sub(base));
        let mut candidate = (self.last & !0xFFFF_FFFF) | rel;
        if candidate + (1 << 31) < self.last {
            candidate += 1 << 32;
        } else if candidate > self.last + (1 << 31) && candidate >= 1 << 32 {
            candidate -= 1 << 32;
        }
        self.last = self.last.max(candidate);
        candidate
    }
}

impl TcpReassembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn segment(&mut self, s: Segment<'_>, out: &mut Vec<SourceEvent>) {
        self.counters.tcp_segments += 1;
        self.last_timestamp_ns = self.last_timestamp_ns.max(s.timestamp_ns);
        let key = canonical(s.src, s.dst);
        if !self.connections.contains_key(&key) {
            if s.rst || (s.fin && s.payload.is_empty()) {
                return; // the end of a connection we never saw
            }
            let handshake = s.syn;
            let client = if s.syn && !s.ack_flag {
                s.src
            } else if s.syn {
                s.dst
            } else if s.src.port() > s.dst.port() {
                s.src
            } else {
                s.dst
            };
            self.next_id += 1;
            let id = ConnectionId(self.next_id);
            let server = if client == s.src { s.dst } else { s.src };
            out.push(SourceEvent::Opened(Connection {
                id,
                pid: 0,
                fd: -1,
                origin: if handshake {
                    Origin::Connect
                } else {
                    Origin::Existing
                },
                local: Some(client),
                peer: Some(server),
                timestamp_ns: s.timestamp_ns,
                seen_as: SeenAs::Plain,
            }));
            self.connections.insert(
                key,
                Tcp {
                    id,
                    client,
                    flows: [Flow::default(), Flow::default()],
                },
            );
        }
        let tcp = self.connections.get_mut(&key).expect("inserted above");
        let direction = if s.src == tcp.client {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let id = tcp.id;
        let flow = &mut tcp.flows[direction as usize];
        if s.syn {
            // Data starts one past the SYN's sequence number.
            flow.base = Some(s.seq.wrapping_add(1));
        }
        if !s.payload.is_empty() {
            let position = flow.position(s.seq);
            let retransmitted = place(
                flow,
                id,
                direction,
                position,
                s.payload,
                s.timestamp_ns,
                out,
            );
            self.counters.retransmitted_bytes += retransmitted;
        }
        flow.fin |= s.fin;
        let both_done = tcp.flows.iter().all(|f| f.fin);
        if s.rst || both_done {
            let tcp = self.connections.remove(&key).expect("present");
            close(tcp, s.timestamp_ns, EndCause::Closed, out);
        }
    }

    /// Ends every connection still open: held bytes are delivered, holes become gaps.
    pub fn finish(&mut self, out: &mut Vec<SourceEvent>) {
        let mut open: Vec<Tcp> = self.connections.drain().map(|(_, tcp)| tcp).collect();
        open.sort_by_key(|tcp| tcp.id);
        for tcp in open {
            close(tcp, self.last_timestamp_ns, EndCause::CaptureEnded, out);
        }
    }
}

/// Delivers a segment in order, holding it while bytes before it are missing. Returns the
/// retransmitted byte count.
fn place(
    flow: &mut Flow,
    id: ConnectionId,
    direction: Direction,
    position: u64,
    payload: &[u8],
    timestamp_ns: u64,
    out: &mut Vec<SourceEvent>,
) -> u64 {
    let end = position + payload.len() as u64;
    if end <= flow.next {
        return payload.len() as u64;
    }
    if position > flow.next {
        // A retransmission of a held segment is not counted twice.
        if let std::collections::btree_map::Entry::Vacant(slot) = flow.held.entry(position) {
            flow.held_bytes += payload.len();
            slot.insert((Bytes::copy_from_slice(payload), timestamp_ns));
        }
        if flow.held_bytes > MAX_HELD_BYTES {
            release(flow, id, direction, true, out);
        }
        return 0;
    }
    let skip = (flow.next - position) as usize;
    emit(
        flow,
        id,
        direction,
        flow.next,
        Bytes::copy_from_slice(&payload[skip..]),
        timestamp_ns,
        out,
    );
    release(flow, id, direction, false, out);
    skip as u64
}

fn emit(
    flow: &mut Flow,
    id: ConnectionId,
    direction: Direction,
    position: u64,
    bytes: Bytes,
    timestamp_ns: u64,
    out: &mut Vec<SourceEvent>,
) {
    flow.next = position + bytes.len() as u64;
    out.push(SourceEvent::Data(Chunk {
        connection: id,
        direction,
        position,
        bytes,
        timestamp_ns,
    }));
}

/// Delivers held segments that now follow on, each with its own capture time; with `force`,
/// also across holes (the streams stage reports each hole as a gap of its exact size).
fn release(
    flow: &mut Flow,
    id: ConnectionId,
    direction: Direction,
    force: bool,
    out: &mut Vec<SourceEvent>,
) {
    while let Some((&position, _)) = flow.held.first_key_value() {
        if position > flow.next && !force {
            return;
        }
        let (position, (bytes, timestamp_ns)) = flow.held.pop_first().expect("non-empty");
        flow.held_bytes -= bytes.len();
        let end = position + bytes.len() as u64;
        if end <= flow.next {
            continue;
        }
        let skip = flow.next.saturating_sub(position) as usize;
        emit(
            flow,
            id,
            direction,
            position + skip as u64,
            bytes.slice(skip..),
            timestamp_ns,
            out,
        );
    }
}

fn close(mut tcp: Tcp, timestamp_ns: u64, cause: EndCause, out: &mut Vec<SourceEvent>) {
    for direction in [Direction::Egress, Direction::Ingress] {
        release(
            &mut tcp.flows[direction as usize],
            tcp.id,
            direction,
            true,
            out,
        );
    }
    out.push(SourceEvent::Closed {
        connection: tcp.id,
        final_positions: None,
        timestamp_ns,
        cause,
    });
}

/// Takes the TCP segment out of a link-layer frame, if it holds one.
fn tcp_segment(link: DataLink, data: &[u8], timestamp_ns: u64) -> Result<Option<Segment<'_>>, ()> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data),
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data),
        // BSD loopback: a 4-byte address family, then IP.
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(data.get(4..).ok_or(())?),
        _ => return Err(()),
    }
    .map_err(|_| ())?;
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => return Ok(None),
    };
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        return Ok(None);
    };
    Ok(Some(Segment {
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack_flag: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload(),
        timestamp_ns,
    }))
}

/// Reads a pcap or pcapng file and hands every source event to `sink`, in capture order.
pub fn replay(path: &Path, mut sink: impl FnMut(SourceEvent)) -> anyhow::Result<PcapCounters> {
    let mut file =
        BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    // Peeked, not consumed: the format's reader reads its header from the start.
    let magic: [u8; 4] = {
        use std::io::BufRead;
        let head = file
            .fill_buf()
            .with_context(|| format!("reading {}", path.display()))?;
        head.get(..4)
            .and_then(|m| m.try_into().ok())
            .with_context(|| format!("{} is too short for a capture", path.display()))?
    };
    let mut reassembler = TcpReassembler::new();
    let mut out = Vec::new();
    fn handle(
        link: DataLink,
        data: &[u8],
        ts: std::time::Duration,
        r: &mut TcpReassembler,
        out: &mut Vec<SourceEvent>,
    ) {
        r.counters.packets += 1;
        match tcp_segment(link, data, ts.as_nanos() as u64) {
            Ok(Some(segment)) => r.segment(segment, out),
            Ok(None) => r.counters.not_tcp += 1,
            Err(()) => r.counters.unparsable += 1,
        }
    }
    if magic == [0x0A, 0x0D, 0x0D, 0x0A] {
        let mut reader = PcapNgReader::new(file).context("reading the pcapng header")?;
        let mut links = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.context("reading a pcapng block")? {
                Block::InterfaceDescription(idb) => links.push(idb.linktype),
                Block::EnhancedPacket(epb) => {
                    let link = links
                        .get(epb.interface_id as usize)
                        .copied()
                        .unwrap_or(DataLink::ETHERNET);
                    handle(link, &epb.data, epb.timestamp, &mut reassembler, &mut out);
                }
                Block::SimplePacket(spb) => {
                    let link = links.first().copied().unwrap_or(DataLink::ETHERNET);
                    handle(
                        link,
                        &spb.data,
                        std::time::Duration::ZERO,
                        &mut reassembler,
                        &mut out,
                    );
                }
                _ => {}
            }
            out.drain(..).for_each(&mut sink);
        }
    } else {
        let mut reader = PcapReader::new(file)
            .with_context(|| format!("{} is neither pcap nor pcapng", path.display()))?;
        let link = reader.header().datalink;
        while let Some(packet) = reader.next_packet() {
            let packet = match packet {
                Ok(packet) => packet,
                // A capture cut short (tcpdump killed) ends with a partial packet.
                Err(pcap_file::PcapError::IncompleteBuffer) => break,
                Err(e) => bail!("reading {}: {e}", path.display()),
            };
            handle(
                link,
                &packet.data,
                packet.timestamp,
                &mut reassembler,
                &mut out,
            );
            out.drain(..).for_each(&mut sink);
        }
    }
    reassembler.finish(&mut out);
    out.drain(..).for_each(&mut sink);
    Ok(reassembler.counters)
}
