//! The sans-IO gRPC decoder (HTTP/2, HPACK, gRPC messages, protobuf) over any bytes: both
//! directions of one connection, cut into pieces and holes as the input says, seen from its
//! start or joined mid-stream. It must never panic, and it keeps nothing but bounded state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace_protocol::{DecoderCounters, Direction, grpc::GrpcDecoder};

fuzz_target!(|data: &[u8]| {
    // The first byte: bit 7 joins mid-stream; the rest scales the pieces' lengths.
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let client = (control & 0x80 == 0).then_some(Direction::Egress);
    let scale = usize::from(control & 0x7F).max(1);
    let mut decoder = GrpcDecoder::new(client);
    let mut counters = DecoderCounters::default();
    let mut out = Vec::new();
    let mut positions = [0u64; 2];
    // Each piece: a byte saying direction, gap or data, and length; then its bytes.
    while let Some((&piece, tail)) = rest.split_first() {
        let direction = if piece & 0x80 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let length = usize::from(piece & 0x3F) * scale;
        let at = &mut positions[direction as usize];
        if piece & 0x40 != 0 {
            decoder.gap(direction, *at, length as u64, &mut counters, &mut out);
            *at += length as u64;
            rest = tail;
        } else {
            let n = length.min(tail.len());
            if decoder
                .data(direction, *at, &tail[..n], 0, &mut counters, &mut out)
                .is_err()
            {
                return;
            }
            *at += n as u64;
            rest = &tail[n..];
        }
        std::hint::black_box(out.drain(..).count());
    }
    assert!(decoder.held_bytes() < 64 << 20);
});
