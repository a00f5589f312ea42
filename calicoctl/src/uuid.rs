//! Random identifiers: `metadata.uid` (a UUID v4, as `uuid.New().String()`) and the
//! ClusterInformation GUID (the same 16 bytes as 32 hex digits).

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// 16 random bytes with the UUID v4 version and variant bits set.
pub fn v4_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // No /dev/urandom: mix the clock, the pid and a stack address (not cryptographic,
        // but unique enough for an object id).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = nanos
            ^ (u128::from(std::process::id()) << 64)
            ^ (&b as *const [u8; 16] as usize as u128);
        let mut x = seed | 1;
        for byte in &mut b {
            // xorshift on the low 64 bits
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = (x >> 24) as u8;
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// `8-4-4-4-12` lower-case hex.
pub fn format(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A new random UUID v4.
pub fn new_v4() -> String {
    format(&v4_bytes())
}

/// A new cluster GUID: `hex.EncodeToString(uuid.New()[:])`.
pub fn new_guid() -> String {
    v4_bytes().iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v4_shape() {
        let u = new_v4();
        assert_eq!(u.len(), 36);
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(
            parts[3].chars().next(),
            Some('8' | '9' | 'a' | 'b')
        ));
        assert_ne!(new_v4(), u);
        let g = new_guid();
        assert_eq!(g.len(), 32);
        assert!(
            g.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
