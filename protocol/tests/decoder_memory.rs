//! The decoder's memory stays bounded whatever a frame claims: measured with a counting
//! allocator around the decoding of frames that claim megabytes.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use mqtrace_protocol::{ConnectionDecoder, DecoderConfig, Direction};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn head(length: u32, header: &[u8]) -> Vec<u8> {
    let mut out = length.to_be_bytes().to_vec();
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out
}

/// Feeds `total` bytes of a frame that starts with `start`, in 64 KiB pieces, and returns the
/// peak bytes allocated meanwhile above what was allocated before.
fn peak_while_decoding(
    decoder: &mut ConnectionDecoder,
    direction: Direction,
    start: &[u8],
    total: u64,
) -> usize {
    let filler = vec![0xAB_u8; 64 << 10];
    let mut out = Vec::with_capacity(4);
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    decoder.data(direction, 0, start, 0, &mut out);
    let mut position = start.len() as u64;
    while position < total {
        let n = filler.len().min((total - position) as usize);
        decoder.data(direction, position, &filler[..n], 0, &mut out);
        position += n as u64;
    }
    PEAK.load(Ordering::Relaxed) - base
}

#[test]
fn frames_claiming_megabytes_do_not_make_the_decoder_allocate_them() {
    const BOUND: usize = 1 << 20;
    let max = DecoderConfig::default().max_frame;

    // A send claiming the largest allowed frame: the body is counted, not kept.
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let send = head(
        max,
        br#"{"code":10,"flag":0,"opaque":1,"extFields":{"topic":"T"}}"#,
    );
    let peak = peak_while_decoding(&mut decoder, Direction::Egress, &send, u64::from(max) + 4);
    assert!(
        peak < BOUND,
        "a 16 MiB send body made the decoder allocate {peak} bytes"
    );

    // A heartbeat (JSON body, parsed) claiming 16 MiB: read up to its cap only.
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let heartbeat = head(max, br#"{"code":34,"flag":0,"opaque":2}"#);
    let peak = peak_while_decoding(
        &mut decoder,
        Direction::Egress,
        &heartbeat,
        u64::from(max) + 4,
    );
    assert!(
        peak < BOUND,
        "a 16 MiB heartbeat body made the decoder allocate {peak} bytes"
    );

    // A pull response whose body claims a 16 MiB message: walked, not kept.
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let pull_header = br#"{"code":11,"flag":0,"opaque":3}"#;
    let pull = head(4 + pull_header.len() as u32, pull_header);
    let mut out = Vec::new();
    decoder.data(Direction::Egress, 0, &pull, 0, &mut out);
    assert_eq!(
        out.len(),
        1,
        "the pull request is decoded, so the response is walked as messages"
    );
    let mut response = head(max, br#"{"code":0,"flag":1,"opaque":3}"#);
    response.extend_from_slice(&((max - 100) as i32).to_be_bytes());
    let peak = peak_while_decoding(
        &mut decoder,
        Direction::Ingress,
        &response,
        u64::from(max) + 4,
    );
    assert!(
        peak < BOUND,
        "a 16 MiB stored message made the decoder allocate {peak} bytes"
    );
    assert_eq!(
        decoder.counters.frames, 2,
        "the response frame was walked to its end"
    );

    // Claims beyond the limit are refused outright.
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let huge = head(u32::MAX, br#"{"code":10,"flag":0,"opaque":4}"#);
    let peak = peak_while_decoding(&mut decoder, Direction::Egress, &huge, 8 << 20);
    assert!(
        peak < BOUND,
        "a 4 GiB claim made the decoder allocate {peak} bytes"
    );
    assert_eq!(decoder.counters.resyncs, 1);
}
