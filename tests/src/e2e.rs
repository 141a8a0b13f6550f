//! What every end-to-end test starts with: one test at a time, the prerequisites checked, and a
//! scratch directory removed at the end.
//!
//! End-to-end tests boot TCG guests, and one guest keeps a core busy: on a 2-core machine they
//! must not run in parallel. Cargo runs test binaries one after another, and [`E2e::start`]
//! holds a process-wide lock for the rest of the test, so only one e2e test runs at a time.
//! A missing prerequisite (root, QEMU, the guest image) fails the test with a message saying
//! what to run; it never skips.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tempfile::TempDir;

use crate::qemu::{GuestImage, QEMU};

/// Serialises the e2e tests of one test binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// The root of the workspace (where `scripts/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// A running end-to-end test: holds the lock that keeps e2e tests serial and a scratch
/// directory (sockets, initramfs copies) removed on drop.
#[derive(Debug)]
pub struct E2e {
    dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl E2e {
    /// Waits for any other e2e test of this process to finish, then checks that the test runs
    /// as root. Panics with what to do when it does not.
    pub fn start() -> Self {
        // A test that panicked while holding the lock left nothing shared behind.
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        require(
            is_root(),
            "end-to-end tests need root (network namespaces, QEMU guests)",
        );
        let dir = tempfile::Builder::new()
            .prefix("vnb-e2e-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a scratch directory: {e}"));
        E2e {
            dir,
            _serial: serial,
        }
    }

    /// The guest image built by `scripts/build-guest`, after checking that QEMU is installed.
    /// Panics with what to do when either is missing.
    pub fn guest_image(&self) -> GuestImage {
        require(
            Command::new(QEMU)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            &format!("{QEMU} is not installed (scripts/install-deps installs it)"),
        );
        GuestImage::locate().unwrap_or_else(|e| {
            panic!("{e}; run scripts/build-guest (scripts/test-all does) to build the guest")
        })
    }

    /// The scratch directory of this test.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn require(ok: bool, what: &str) {
    assert!(
        ok,
        "e2e prerequisite missing: {what}. Run the suite with `sudo scripts/test-all`."
    );
}
