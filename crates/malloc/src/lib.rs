//! Memory given back by `calico-node run`: glibc malloc tuning ([`limit_arenas`] at start-up,
//! [`release_free_memory`] after a large piece of work) and the pages of the agent's own
//! code that it no longer runs ([`release_code_pages`], once it is idle).
//!
//! Why this crate exists: glibc gives every thread that allocates its own arena (up to
//! 8 × cores) and keeps what is freed in them; the agent's runtime, kernel and routes threads
//! each build and drop large tables (a route dump, a plan for 30,000 routes), so its
//! resident size stayed at the peak of every arena rather than what it holds. `mallopt`,
//! `malloc_trim` and `madvise` have no safe wrapper in any maintained crate (nix, rustix:
//! none, or `unsafe fn`); the workspace forbids `unsafe`, this crate only denies it and
//! allows it on those three calls.
//! Elsewhere than glibc/Linux they are no-ops.
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

/// Unmaps the resident pages of the program's own code (`MADV_DONTNEED` on the executable's
/// read-only, executable, private file mappings), returning how many bytes of mappings it
/// released. The pages stay in the page cache: what runs next is mapped again by a minor
/// fault (with the kernel's fault-around, 64 KiB at a time), so what stays resident is the
/// code the agent still runs, not every path start-up took (TLS, the datastore listing,
/// configuration parsing). Only code mappings qualify: they are never written, so
/// dropping them loses nothing (a writable or written mapping — data, relocations — is
/// never touched).
pub fn release_code_pages() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut released = 0;
    for (start, end) in code_mappings(&maps, &exe.to_string_lossy()) {
        advise_dontneed(start, end - start)?;
        released += end - start;
    }
    Ok(released)
}

/// The `r-xp` mappings of `path` in a `/proc/<pid>/maps` text, as (start, end) addresses.
fn code_mappings(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // address range, permissions, offset, device, inode, then the path (which
            // may contain spaces, and is padded from the inode by several).
            let mut rest = line;
            let mut fields = [""; 5];
            for f in &mut fields {
                rest = rest.trim_start();
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                *f = &rest[..end];
                rest = &rest[end..];
            }
            if fields[1] != "r-xp" || rest.trim() != path {
                return None;
            }
            let (start, end) = fields[0].split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn advise_dontneed(start: usize, len: usize) -> std::io::Result<()> {
    // SAFETY: the range is one of our executable's read-only code mappings (from
    // /proc/self/maps); MADV_DONTNEED only drops its page-table entries, and since such a
    // mapping is never written, the next access reads the same bytes from the file again.
    // No Rust reference points into code.
    #[allow(unsafe_code)]
    let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_dontneed(_start: usize, _len: usize) -> std::io::Result<()> {
    Ok(())
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
    fn only_the_executables_code_mappings_are_chosen() {
        let maps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 42    /usr/bin/calico-node
55d0a0100000-55d0a0900000 r-xp 00100000 fd:01 42    /usr/bin/calico-node
55d0a0900000-55d0a0a00000 r--p 00900000 fd:01 42    /usr/bin/calico-node
55d0a0a00000-55d0a0a10000 rw-p 00a00000 fd:01 42    /usr/bin/calico-node
7f0000000000-7f0000100000 r-xp 00028000 fd:01 77    /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000201000 r-xp 00000000 00:00 0     [vdso]
7f0000300000-7f0000400000 r-xp 00000000 fd:01 43    /opt/with space/calico-node
";
        assert_eq!(
            super::code_mappings(maps, "/usr/bin/calico-node"),
            vec![(0x55d0a0100000, 0x55d0a0900000)]
        );
        assert_eq!(
            super::code_mappings(maps, "/opt/with space/calico-node"),
            vec![(0x7f0000300000, 0x7f0000400000)]
        );
    }

    /// The test binary's own code, released while it runs: it keeps running (the pages
    /// come back from the file), and the call reports what it released.
    #[test]
    fn released_code_comes_back_when_it_runs() {
        let released = super::release_code_pages().expect("release");
        assert!(released > 0, "the test binary has code mappings");
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        assert!(super::release_code_pages().is_ok());
    }
}
