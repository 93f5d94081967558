//! Where bytes come from: the kernel probes of a live host ([`kernel`], behind the
//! [`capture`] seam), or a packet capture file (`pcap`, in the core crate). Both produce the same
//! [`SourceEvent`]s, whose types the core crate defines and which are re-exported here.

pub mod capture;
pub mod kernel;

pub use mqtrace_core::sources::*;
