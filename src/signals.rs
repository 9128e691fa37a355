//! SIGTERM and SIGINT during a sync: instead of dying mid-line, the tap notes the signal, the
//! sync loop stops after the record it is writing, writes a resumable STATE and exits 143/130.
//!
//! Installed only for the data sync (discovery and `--about` keep the default behaviour).
//! The handlers are `signal-hook`'s: each stores its signal's number into one atomic, which
//! the sync polls (after every record, and while it waits for rows).

use std::sync::atomic::{AtomicUsize, Ordering};

pub use signal_hook::consts::{SIGINT, SIGTERM};

/// The last signal received, 0 for none.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// Routes SIGTERM and SIGINT to the flag. A handler that cannot be installed (which the
/// operating system allows only for signals such as SIGKILL) leaves that signal's default.
pub fn install() {
    for signum in [SIGINT, SIGTERM] {
        // Signal numbers are small and positive.
        let value = usize::try_from(signum).unwrap_or_default();
        if let Err(e) = signal_hook::flag::register_usize(signum, &RECEIVED, value) {
            log::warn!("could not install the handler of signal {signum}: {e}");
        }
    }
}

/// The signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        n => i32::try_from(n).ok(),
    }
}
