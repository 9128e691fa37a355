//! SIGTERM and SIGINT during a sync: instead of dying mid-line, the tap notes the signal, the
//! sync loop stops after the record it is writing, writes a resumable STATE and exits 143/130.
//!
//! Installed only for the data sync (discovery and `--about` keep the default behaviour).
//! Uses the C library's `signal(2)` directly: one flag is all we need, not a dependency.

use std::sync::atomic::{AtomicI32, Ordering};

/// `SIGINT` on Linux and the BSDs.
pub const SIGINT: i32 = 2;
/// `SIGTERM` on Linux and the BSDs.
pub const SIGTERM: i32 = 15;

/// The last signal received, 0 for none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

unsafe extern "C" {
    /// `sighandler_t signal(int signum, sighandler_t handler)` from the C library.
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

/// Records the signal; async-signal-safe (one atomic store).
extern "C" fn on_signal(signum: i32) {
    RECEIVED.store(signum, Ordering::SeqCst);
}

/// Routes SIGTERM and SIGINT to the flag.
pub fn install() {
    // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe, and `signal` is
    // called with valid signal numbers.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
}

/// The signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}
