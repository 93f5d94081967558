//! Layouts shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps and the ring
//! buffer, user space reads it back byte for byte. Change a layout on both sides at once.
#![no_std]

/// Bytes of payload one ring-buffer record carries at most. A larger transfer becomes several
/// records. Bounded by the per-CPU scratch map value size (32 KiB on Linux).
pub const CHUNK_SIZE: usize = 16 * 1024;

/// Records one buffer of a syscall may emit at most (the per-syscall byte cap divided by the
/// chunk size); a vectored call emits at least one record per iovec entry. A bound the
/// verifier can see.
pub const MAX_RECORDS_PER_SYSCALL: u32 = 64;

/// Default for [`Config::max_bytes_per_syscall`].
pub const DEFAULT_MAX_BYTES_PER_SYSCALL: u32 = 256 * 1024;

/// The largest cap user space may set: what [`MAX_RECORDS_PER_SYSCALL`] full chunks hold.
pub const MAX_BYTES_PER_SYSCALL_LIMIT: u32 = MAX_RECORDS_PER_SYSCALL * CHUNK_SIZE as u32;

/// Sockets the kernel tracks at once; beyond it new connections are counted and not copied.
pub const MAX_SOCKETS: u32 = 65_536;

/// Names of the maps, as both sides spell them.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const SELECTED_PROCESSES: &str = "SELECTED_PROCESSES";
    pub const SOCKETS: &str = "SOCKETS";
    pub const RECORDS: &str = "RECORDS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const COMM_RULES: &str = "COMM_RULES";
    pub const CGROUP_RULES: &str = "CGROUP_RULES";
    pub const TLS_STREAMS: &str = "TLS_STREAMS";
}

/// Value of a SELECTED_PROCESSES entry, and of a rule in COMM_RULES or CGROUP_RULES: whether
/// the process is traced and why. A process without an entry follows `Config::trace_all`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Selection {
    /// Never traced, even when tracing all.
    Excluded = 0,
    /// Named by its pid.
    ByPid = 1,
    /// Its command name matched a rule when it started (or when the rule was made).
    ByComm = 2,
    /// It ran in a cgroup (or below one) that a rule names.
    ByCgroup = 3,
}

impl Selection {
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Selection::Excluded,
            1 => Selection::ByPid,
            2 => Selection::ByComm,
            3 => Selection::ByCgroup,
            _ => return None,
        })
    }
}

/// Length of a kernel command name (`comm`) with its terminating NUL: names are cut to 15 bytes.
pub const COMM_LEN: usize = 16;

/// Rules per kind (command names, cgroups) at most.
pub const MAX_RULES: u32 = 256;

/// Cgroup levels the exec probe looks up for a rule, from the root down.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Discriminant at offset 0 of every ring-buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Data = 1,
    ConnectionOpened = 2,
    ConnectionClosed = 3,
    /// A [`ProcessRecord`].
    ProcessExited = 4,
    /// Plaintext a TLS library encrypted or decrypted: a [`DataHeader`] whose
    /// `connection_id` is the library's connection object (`SSL *`) and whose `fd` is -1,
    /// for user space to bind to its socket.
    TlsData = 5,
    /// The first bytes of ciphertext a TLS library handed to its BIO: a [`TlsCiphertext`].
    TlsCiphertext = 6,
    /// A selected process mapped an executable file (a TLS library, maybe) or exec'd a
    /// program: a [`ProcessRecord`].
    LibraryMapped = 7,
}

/// Which way the bytes went, seen from the traced process.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum Direction {
    Egress = 0,
    Ingress = 1,
}

/// The syscall that moved the bytes, kept for debugging and per-syscall statistics.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Write = 1,
    Writev = 2,
    Sendto = 3,
    Sendmsg = 4,
    Read = 5,
    Readv = 6,
    Recvfrom = 7,
    Recvmsg = 8,
    Connect = 9,
    Accept = 10,
    Accept4 = 11,
    /// `SSL_write` of a TLS library (plaintext in).
    SslWrite = 12,
    /// `SSL_read` of a TLS library (plaintext out).
    SslRead = 13,
}

impl Syscall {
    pub const fn direction(self) -> Direction {
        match self {
            Syscall::Write
            | Syscall::Writev
            | Syscall::Sendto
            | Syscall::Sendmsg
            | Syscall::SslWrite => Direction::Egress,
            _ => Direction::Ingress,
        }
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Syscall::Write,
            2 => Syscall::Writev,
            3 => Syscall::Sendto,
            4 => Syscall::Sendmsg,
            5 => Syscall::Read,
            6 => Syscall::Readv,
            7 => Syscall::Recvfrom,
            8 => Syscall::Recvmsg,
            9 => Syscall::Connect,
            10 => Syscall::Accept,
            11 => Syscall::Accept4,
            12 => Syscall::SslWrite,
            13 => Syscall::SslRead,
            _ => return None,
        })
    }
}

/// Header of a [`RecordKind::Data`] record; `copied_len` payload bytes follow it.
///
/// One syscall that moved `syscall_len` bytes starting at stream position `syscall_pos`
/// yields one or more records, each covering `[syscall_pos + chunk_offset, +copied_len)`.
/// Whatever of the syscall's bytes no record covers was not copied (cap, failed read, full
/// ring), and user space sees exactly where from the positions.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    pub kind: u32,
    pub direction: u8,
    pub syscall: u8,
    /// The ring's lost records so far (all CPUs), its low 16 bits: a change from the record
    /// before says records went missing in between.
    pub records_lost: u16,
    pub timestamp_ns: u64,
    pub connection_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub copied_len: u32,
    pub syscall_len: u64,
    pub syscall_pos: u64,
    pub chunk_offset: u64,
}

/// The per-CPU scratch value in which the kernel assembles a data record before it is copied
/// into the ring buffer with its exact length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataRecord {
    pub header: DataHeader,
    pub payload: [u8; CHUNK_SIZE],
}

/// How the agent learned of a connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Connect = 1,
    Accept = 2,
}

/// A socket of a selected process entered the socket table at connect or accept.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectionOpened {
    pub kind: u32,
    pub origin: u8,
    pub _pad: u8,
    /// AF_INET or AF_INET6 as the syscall's sockaddr said; 0 when the caller passed none.
    pub family: u16,
    pub timestamp_ns: u64,
    pub connection_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    /// Port in host byte order.
    pub peer_port: u16,
    pub _pad2: u16,
    /// IPv4 in the first four bytes, or IPv6.
    pub peer_addr: [u8; 16],
}

/// A tracked socket was closed; the final stream positions tell user space whether bytes at
/// the end of either direction were never seen.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectionClosed {
    pub kind: u32,
    /// As [`DataHeader::records_lost`], its low 32 bits.
    pub records_lost: u32,
    pub timestamp_ns: u64,
    pub connection_id: u64,
    pub pid: u32,
    pub fd: i32,
    pub egress_pos: u64,
    pub ingress_pos: u64,
}

/// Something happened to a selected process: [`RecordKind::ProcessExited`] (user space
/// forgets its sockets) or [`RecordKind::LibraryMapped`] (it mapped an executable file, or
/// exec'd a program: user space looks for TLS libraries in it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessRecord {
    pub kind: u32,
    pub pid: u32,
    pub timestamp_ns: u64,
    /// 1: the process was stopped at exec ([`Config::hold_at_exec`]) and waits for user space
    /// to probe it and continue it.
    pub held: u32,
    /// 1: a [`RecordKind::LibraryMapped`] written as the process exec'd a program.
    pub exec: u32,
}

/// Bytes of ciphertext a [`TlsCiphertext`] record keeps: the record header and enough of the
/// (random-looking) record body to find it again among the bytes the process writes.
pub const CIPHERTEXT_PREFIX: usize = 32;

/// The start of ciphertext that a TLS library wrote into its BIO for the connection object
/// `ssl`. The same bytes then leave through a write syscall on the socket: that write names
/// the socket the plaintext of `ssl` belongs to, whether the library writes the socket itself
/// or hands buffers to its caller (memory BIOs: netty-tcnative, gRPC C core, .NET).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsCiphertext {
    pub kind: u32,
    pub pid: u32,
    pub timestamp_ns: u64,
    pub ssl: u64,
    /// Bytes the BIO was given.
    pub len: u32,
    /// Of them, copied into `prefix`.
    pub prefix_len: u32,
    pub prefix: [u8; CIPHERTEXT_PREFIX],
}

/// Value of the TLS stream table: the stream positions of one connection object, indexed by
/// [`Direction`], and [`TLS_STREAM_IGNORED`] or 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsStream {
    pub positions: [u64; 2],
    pub flags: u64,
}

/// [`TlsStream::flags`]: the object's plaintext is not copied (its connection was let go).
pub const TLS_STREAM_IGNORED: u64 = 1;

/// Key of the TLS stream table: one connection object of a TLS library in one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub pid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// Key of the socket table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketKey {
    pub pid: u32,
    pub fd: i32,
}

/// Value of the socket table: a connection id and the bytes seen so far in each direction,
/// indexed by [`Direction`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketState {
    pub connection_id: u64,
    pub positions: [u64; 2],
    /// [`SOCKET_PAYLOAD_IGNORED`] or 0.
    pub flags: u64,
}

/// [`SocketState::flags`]: the socket's payload is not copied (its plaintext is, from its TLS
/// library); it stays in the table so that its close is still reported.
pub const SOCKET_PAYLOAD_IGNORED: u64 = 1;

/// Runtime configuration, the single entry of the CONFIG array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// 1: every process except the agent; 0: only those in SELECTED_PROCESSES.
    pub trace_all: u32,
    /// The agent's own process id, never traced.
    pub agent_pid: u32,
    /// Bytes copied at most per syscall; the rest is counted in `BytesNotCopied`.
    pub max_bytes_per_syscall: u32,
    /// 1: a selected process that execs a program not yet looked at (in its cgroup, tracing
    /// every process; else every exec) is stopped (SIGSTOP) until user space has placed its TLS
    /// probes and continues it: a program that begins TLS at once loses no plaintext.
    pub hold_at_exec: u32,
    /// Byte offsets of `task_struct.signal` and `signal_struct.tty` on this kernel (from its
    /// BTF): a process with a controlling terminal is never held, since an interactive shell
    /// would take the stop as the user's Ctrl-Z.
    pub task_signal_offset: u32,
    pub signal_tty_offset: u32,
}

/// Slots of the per-CPU COUNTERS array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Records dropped because the ring buffer was full.
    RecordsLost = 0,
    /// Payload bytes not copied because of the per-syscall cap.
    BytesNotCopied = 1,
    /// `bpf_probe_read_user` failures: the payload of that piece was not copied.
    UserReadFailures = 2,
    /// Data records written to the ring buffer.
    RecordsEmitted = 3,
    /// Payload bytes written to the ring buffer.
    BytesCopied = 4,
    /// Connections not tracked because the socket table was full.
    SocketTableFull = 5,
    /// Syscalls on tracked sockets not followed because the table of syscalls in flight was
    /// full: their bytes were neither copied nor counted in the stream positions.
    SyscallTableFull = 6,
}

pub const COUNTER_SLOTS: u32 = 8;

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::RecordsLost,
        Counter::BytesNotCopied,
        Counter::UserReadFailures,
        Counter::RecordsEmitted,
        Counter::BytesCopied,
        Counter::SocketTableFull,
        Counter::SyscallTableFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::RecordsLost => "records_lost_ring_full",
            Counter::BytesNotCopied => "bytes_not_copied_cap",
            Counter::UserReadFailures => "user_read_failures",
            Counter::RecordsEmitted => "records_emitted",
            Counter::BytesCopied => "bytes_copied",
            Counter::SocketTableFull => "socket_table_full",
            Counter::SyscallTableFull => "syscall_table_full",
        }
    }
}

/// Bit set in connection ids that user space assigns to sockets it registers itself (those
/// that existed before the process was selected), so they never collide with kernel ids.
pub const USER_CONNECTION_ID_BIT: u64 = 1 << 63;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C) plain data with no padding-sensitive invariants.
    unsafe impl aya::Pod for SocketKey {}
    unsafe impl aya::Pod for SocketState {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for TlsKey {}
    unsafe impl aya::Pod for TlsStream {}
}
