//! Test support: an in-process vhost-user frontend and QEMU guest helpers.
//!
//! End-to-end support: [`e2e`] (serial e2e tests, prerequisites, scratch directory),
//! [`qemu`] (TCG guests with vhost-user NICs), [`console`] (their serial console),
//! [`initramfs`] (a per-test /test.sh), [`netns`] (network namespaces and veth pairs).

pub mod console;
pub mod e2e;
pub mod initramfs;
pub mod netns;
pub mod qemu;
