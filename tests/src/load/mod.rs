//! Load generation: guests played by the frontend harness ([`crate::frontend`]) against a
//! vhost-user backend (the daemon, or DPDK testpmd's vhost PMD as the reference device), and
//! what a run measures.
//!
//! | module | holds |
//! |---|---|
//! | [`traffic`] | frames: UDP flows over several MACs, addresses and ports; 64 KiB TCP segments for TSO |
//! | [`guest`] | [`Guest`](guest::Guest): one NIC, its MACs, its prepared frames |
//! | [`run`] | [`run::throughput`] and [`run::latency`], and what they measure |
//! | [`proc`] | CPU time, memory and threads of a process, from /proc |
//! | [`backend`] | the device under test as a child process: the daemon or testpmd |
//! | [`cores`] | the round trip of a cache line between two CPUs (how far apart the host put them) |
//! | [`drops`] | the daemon's drop counters by reason, through its control socket |
//! | [`report`] | medians and the table |
//! | [`sys`] | pinning a thread to a CPU |
//!
//! Two binaries use it: `loadgen` (one run against sockets that a backend serves) and `bench`
//! (the standard set against the daemon and testpmd, see docs/performance.md).

pub mod backend;
pub mod cores;
pub mod drops;
pub mod guest;
pub mod proc;
pub mod report;
pub mod run;
mod sys;
pub mod traffic;

pub use sys::pin_to_cpu;
