//! glibc malloc tuning for `calico-node run`: [`limit_arenas`] at start-up and
//! [`release_free_memory`] after a large piece of work; [`heap_in_use`] for its logs.
//!
//! Why this crate exists: glibc gives every thread that allocates its own arena (up to
//! 8 × cores) and keeps what is freed in them; the agent's runtime, kernel and routes threads
//! each build and drop large tables (a route dump, a plan for 30,000 routes), so its
//! resident size stayed at the peak of every arena rather than what it holds. `mallopt` and
//! `malloc_trim` have no safe wrapper in any maintained crate (nix, rustix: none); the
//! workspace forbids `unsafe`, this crate only denies it and allows it on the two calls.
//! Elsewhere than glibc both are no-ops.
//!
//! Must not import other workspace crates.

/// Caps the number of malloc arenas (`M_ARENA_MAX`). Call before other threads start.
pub fn limit_arenas(max: u16) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes the allocator's parameters.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, i32::from(max));
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}

/// Returns the free pages of every arena to the kernel (`malloc_trim(0)`). Costs a walk
/// over the free lists: call it after large work, not on every change.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only releases memory malloc holds free.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes malloc has handed out and not had back (`mallinfo2`: `uordblks` plus `hblkhd`, the
/// large blocks it mapped on their own): the heap the program holds, to compare with its
/// resident size. `None` elsewhere than glibc.
pub fn heap_in_use() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes nothing and returns a plain struct of counters.
        #[allow(unsafe_code)]
        let info = unsafe { libc::mallinfo2() };
        Some(info.uordblks + info.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Bytes malloc holds free inside its heaps (`mallinfo2`: `fordblks`): what fragments the
/// heap (pages with some of it are resident while anything else on them is live). `None`
/// elsewhere than glibc.
pub fn heap_free() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: as in heap_in_use.
        #[allow(unsafe_code)]
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_calls_are_harmless_at_any_time() {
        super::limit_arenas(2);
        let big: Vec<Vec<u8>> = (0..1000).map(|i| vec![0u8; 1000 + i]).collect();
        drop(big);
        super::release_free_memory();
    }

    #[test]
    fn heap_in_use_follows_what_is_held() {
        let Some(before) = super::heap_in_use() else {
            return;
        };
        // Far more than the other test allocates and frees meanwhile.
        let held = vec![1u8; 64 << 20];
        let during = super::heap_in_use().unwrap_or(0);
        assert!(during >= before + (32 << 20), "{before} → {during}");
        drop(held);
    }
}
