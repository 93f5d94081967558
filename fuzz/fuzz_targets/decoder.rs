//! The sans-IO decoder over any bytes: both directions of one connection, cut into pieces and
//! holes as the input says, every command interpreted. It must never panic, and it keeps
//! nothing but bounded state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace_protocol::{ConnectionDecoder, DecoderConfig, Direction, operation::interpret};

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), control & 1 == 1);
    let mut out = Vec::new();
    let mut positions = [0u64; 2];
    // Each piece: a byte saying direction, gap or data, and length; then its bytes.
    while let Some((&piece, tail)) = rest.split_first() {
        let direction = if piece & 0x80 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let length = usize::from(piece & 0x3F) * usize::from(control.max(1));
        let at = &mut positions[direction as usize];
        if piece & 0x40 != 0 {
            decoder.gap(direction, *at, length as u64, &mut out);
            *at += length as u64;
            rest = tail;
        } else {
            let n = length.min(tail.len());
            decoder.data(direction, *at, &tail[..n], 0, &mut out);
            *at += n as u64;
            rest = &tail[n..];
        }
        for mut command in out.drain(..) {
            std::hint::black_box(interpret(&mut command));
        }
    }
});
