//! Helpers shared by the end-to-end tests and their helper programs.

pub mod agent;
pub mod apache;
pub mod capture;
pub mod frames;
pub mod grpc_broker;
pub mod http;
pub mod netns;
pub mod otlp;
pub mod process;
pub mod relay;
pub mod rocketmq;
pub mod spancheck;
pub mod wait;

/// Deterministic pseudo-random bytes (xorshift64*), so that a test and the helper program it
/// starts agree on what was sent without passing it around.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The syscall pair a connection's exchange uses: the client sends with the first and the
/// server reads with the second; the reply goes back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    WriteRead,
    WritevReadv,
    SendtoRecvfrom,
    SendmsgRecvmsg,
}

/// One request/reply exchange on one connection.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    pub family: Family,
    /// On the connection opened before tracing began.
    pub on_existing: bool,
    pub request_len: usize,
    pub reply_len: usize,
    /// Largest single send; larger requests are sent in several calls.
    pub max_send: usize,
    pub seed: u64,
}

impl Exchange {
    pub fn request(&self) -> Vec<u8> {
        pattern(self.seed * 2, self.request_len)
    }
    pub fn reply(&self) -> Vec<u8> {
        pattern(self.seed * 2 + 1, self.reply_len)
    }
}

/// Largest read any helper makes, as the capture issue demands: "reads of at most 64 KiB".
pub const MAX_READ: usize = 64 * 1024;

/// What `socket-exchange all SEED` does, in order.
pub fn all_families_plan(seed: u64) -> Vec<Exchange> {
    let ex = |i: u64, family, on_existing, request_len, reply_len, max_send| Exchange {
        family,
        on_existing,
        request_len,
        reply_len,
        max_send,
        seed: seed * 100 + i,
    };
    vec![
        ex(0, Family::WriteRead, true, 10_000, 3_000, usize::MAX),
        ex(1, Family::WriteRead, false, 200_000, 50_000, usize::MAX),
        ex(2, Family::WritevReadv, false, 150_000, 20_000, usize::MAX),
        ex(3, Family::SendtoRecvfrom, false, 120_000, 7_000, usize::MAX),
        ex(
            4,
            Family::SendmsgRecvmsg,
            false,
            100_000,
            30_000,
            usize::MAX,
        ),
        // 8 MiB, written 64 KiB at a time and read at most 64 KiB at a time.
        ex(5, Family::WriteRead, false, 8 << 20, 1_000, 64 * 1024),
    ]
}

/// `socket-exchange phases SEED`: phase 1 before the process is selected, phase 2 after.
pub fn phase_plan(seed: u64, phase: u64) -> Vec<Exchange> {
    let ex = |i: u64, on_existing| Exchange {
        family: Family::WriteRead,
        on_existing,
        request_len: 5_000 + i as usize,
        reply_len: 700 + i as usize,
        max_send: usize::MAX,
        seed: seed * 100 + phase * 10 + i,
    };
    vec![ex(0, true), ex(1, false)]
}

/// `socket-exchange cap SEED CAP`: one write larger than the cap, then a small one.
pub fn cap_plan(seed: u64) -> (Vec<u8>, Vec<u8>) {
    (pattern(seed * 2, 1 << 20), pattern(seed * 2 + 1, 1_000))
}
