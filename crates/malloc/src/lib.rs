//! Memory given back by `calico-node run`: glibc malloc tuning ([`limit_arenas`] at start-up,
//! [`release_free_memory`] after a large piece of work) and the mapped pages of code and
//! constants that it no longer runs ([`release_file_pages`], once it is idle).
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

/// Unmaps the resident pages of the program's read-only file mappings — its code and
/// constant data, and those of the libraries it links — returning how many bytes of
/// mappings it released. `MADV_DONTNEED` drops only the page-table entries: the pages stay in
/// the page cache, and what runs next is mapped again by a minor fault (with the kernel's
/// fault-around, 64 KiB at a time). So what stays resident is what the agent still runs, not
/// every path start-up took once (TLS, the datastore listing, configuration parsing, the
/// first plans).
///
/// Only mappings that lose nothing qualify: private, not writable, backed by a file, and
/// with no page of their own (`Anonymous: 0 kB` in smaps: never written, so every page is
/// the file's). Relocated read-only data (RELRO) has pages of its own and is left alone, as
/// are the stack, the heap and every writable mapping.
pub fn release_file_pages() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for (start, end) in clean_file_mappings(&smaps) {
        advise_dontneed(start, end - start)?;
        released += end - start;
    }
    Ok(released)
}

/// The private, read-only, file-backed mappings without pages of their own, from a
/// `/proc/<pid>/smaps` text, as (start, end) addresses.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read: its range, if it qualifies so far.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            let none = anon.split_whitespace().next() == Some("0");
            if let Some(range) = current.take()
                && none
            {
                out.push(range);
            }
            continue;
        }
        // A mapping's header: address range, permissions, offset, device, inode, path.
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            // A field line ("Rss: 4 kB"), not a header.
            continue;
        };
        let path = fields.nth(3).unwrap_or("");
        let private_read_only = perms.len() == 4
            && perms.starts_with('r')
            && !perms.contains('w')
            && perms.ends_with('p');
        current =
            (private_read_only && path.starts_with('/') && end > start).then_some((start, end));
    }
    out
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
    fn only_clean_read_only_file_mappings_are_chosen() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 42    /usr/bin/calico-node
Rss:                 400 kB
Anonymous:             0 kB
55d0a0100000-55d0a0900000 r-xp 00100000 fd:01 42    /usr/bin/calico-node
Rss:                4000 kB
Anonymous:             0 kB
55d0a0900000-55d0a0a00000 r--p 00900000 fd:01 42    /usr/bin/calico-node
Rss:                 400 kB
Anonymous:           400 kB
55d0a0a00000-55d0a0a10000 rw-p 00a00000 fd:01 42    /usr/bin/calico-node
Anonymous:             0 kB
55d0a1000000-55d0a2000000 rw-p 00000000 00:00 0     [heap]
Anonymous:          4096 kB
7f0000000000-7f0000100000 r-xp 00028000 fd:01 77    /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000100000-7f0000110000 r--s 00000000 fd:01 78    /dev/shm/shared
Anonymous:             0 kB
7f0000200000-7f0000201000 r-xp 00000000 00:00 0     [vdso]
Anonymous:             0 kB
7f0000300000-7f0000301000 ---p 00000000 00:00 0
Anonymous:             0 kB
";
        assert_eq!(
            super::clean_file_mappings(smaps),
            vec![
                (0x55d0a0000000, 0x55d0a0100000),
                (0x55d0a0100000, 0x55d0a0900000),
                (0x7f0000000000, 0x7f0000100000),
            ],
            "code and constants, not relocated data, writable or shared mappings, the heap or \
             the vdso"
        );
    }

    /// The test binary's own code, released while it runs: it keeps running (the pages
    /// come back from the file), and the call reports what it released.
    #[test]
    fn released_code_comes_back_when_it_runs() {
        let released = super::release_file_pages().expect("release");
        assert!(released > 0, "the test binary has code mappings");
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        assert!(super::release_file_pages().is_ok());
    }
}
