//! Test support: an in-process vhost-user frontend and QEMU guest helpers.
//!
//! In-process harness: [`frontend`] plays a VMM and its guest's virtio-net driver against a
//! vhost-user backend socket; [`guest_stack`] puts a guest's TCP/IP stack (smoltcp) on it.
//!
//! Load generation and benchmarks: [`load`] (guests, runs, the backends under test; used by the
//! `loadgen` and `bench` binaries); [`policy_wasm`] builds the policy modules for wasm32 (the
//! same file the policy tests of `vhost-net-backend` include).
//!
//! In-process daemons: [`control_cli`] starts one with its control socket (`Lab`) and runs CLI
//! subcommands against control sockets.
//!
//! End-to-end support: [`e2e`] (serial e2e tests, prerequisites, scratch directory),
//! [`qemu`] (TCG guests with vhost-user NICs), [`guest_script`] (their /test.sh and what it
//! prints), [`initramfs`] (how /test.sh gets in), [`daemon`] (the daemon as a child process),
//! [`process`] and [`console`] (child processes and their output), [`testpmd`] (DPDK testpmd
//! as a frontend and as the load generator's reference backend), [`netns`] (network
//! namespaces and veth pairs), [`wan`] (the hosts NAT tests reach), [`nat_e2e`] (the NAT
//! network's scenarios, run for each egress kind), [`lan`] (a LAN behind a bridged network's
//! uplink).

pub mod console;
pub mod control_cli;
pub mod daemon;
pub mod e2e;
pub mod frontend;
pub mod guest_script;
pub mod guest_stack;
pub mod initramfs;
pub mod lan;
pub mod load;
pub mod nat_e2e;
pub mod netns;
#[path = "../../vhost-net-backend/tests/support/policy_wasm.rs"]
pub mod policy_wasm;
pub mod process;
pub mod qemu;
pub mod testpmd;
pub mod vm_network;
pub mod wan;
