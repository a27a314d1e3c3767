//! Process hardening applied before any secret is in memory.

use nix::sys::resource::{setrlimit, Resource};

/// Disables core dumps (RLIMIT_CORE = 0 and not dumpable), so a crash can
/// never write keys, PINs or plaintext to disk.
///
/// # Errors
/// The OS error; callers should refuse to continue, since the promise that
/// secrets never reach disk would not hold.
pub fn disable_core_dumps() -> nix::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    nix::sys::prctl::set_dumpable(false)
}
