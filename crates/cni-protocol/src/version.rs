//! CNI specification versions and what each one allows.

use std::fmt;
use std::str::FromStr;

/// A CNI specification version this suite speaks.
///
/// Ordered, so `v >= CniVersion::V0_4_0` reads as "has CHECK".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Every version we support, oldest first (the order VERSION reports).
    pub const ALL: [CniVersion; 7] = [
        CniVersion::V0_1_0,
        CniVersion::V0_2_0,
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest version we implement.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// What a config without `cniVersion` means. Calico reads an empty version as 0.2.0
    /// (the legacy result format); so do we.
    pub const IMPLIED: CniVersion = CniVersion::V0_2_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_1_0 => "0.1.0",
            CniVersion::V0_2_0 => "0.2.0",
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// 0.1.0 and 0.2.0 results use the `ip4`/`ip6` form.
    pub fn is_legacy(self) -> bool {
        self <= CniVersion::V0_2_0
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`; 1.0.0 dropped it.
    pub fn has_ip_version_field(self) -> bool {
        (CniVersion::V0_3_0..=CniVersion::V0_4_0).contains(&self)
    }

    /// CHECK appeared in 0.4.0.
    pub fn supports_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// GC and STATUS appeared in 1.1.0.
    pub fn supports_gc_and_status(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// The 1.1.0 result fields (interface mtu/socketPath/pciID, route mtu/advmss/...).
    pub fn has_v1_1_result_fields(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version string outside [`CniVersion::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported CNI version {0:?}")]
pub struct UnsupportedVersion(pub String);

impl FromStr for CniVersion {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_string()))
    }
}

impl serde::Serialize for CniVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The list of supported versions as VERSION prints it.
pub fn supported_versions() -> Vec<&'static str> {
    CniVersion::ALL.iter().map(|v| v.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_nothing_else() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>(), Ok(v));
        }
        for bad in ["", "0.5.0", "1.2.0", "2.0.0", "1.0", "v1.0.0", " 1.0.0"] {
            assert!(bad.parse::<CniVersion>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn verb_availability_follows_the_spec() {
        use CniVersion::*;
        let check: Vec<_> = CniVersion::ALL
            .into_iter()
            .filter(|v| v.supports_check())
            .collect();
        assert_eq!(check, [V0_4_0, V1_0_0, V1_1_0]);
        let gc: Vec<_> = CniVersion::ALL
            .into_iter()
            .filter(|v| v.supports_gc_and_status())
            .collect();
        assert_eq!(gc, [V1_1_0]);
        assert!(V0_1_0.is_legacy() && V0_2_0.is_legacy() && !V0_3_0.is_legacy());
        assert!(!V0_2_0.has_ip_version_field());
        assert!(V0_3_0.has_ip_version_field() && V0_4_0.has_ip_version_field());
        assert!(!V1_0_0.has_ip_version_field());
    }

    #[test]
    fn supported_list_is_in_order() {
        assert_eq!(
            supported_versions(),
            [
                "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"
            ]
        );
    }
}
