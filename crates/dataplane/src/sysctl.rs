//! `/proc/sys/net` settings. The files resolve to the namespace of the thread that opens
//! them, so pod settings are written from inside [`crate::netns::within`].

use crate::error::DataplaneError;

/// Writes `value` to `/proc/sys/net/<path>`.
pub fn set(path: &str, value: &str) -> Result<(), DataplaneError> {
    let full = format!("/proc/sys/net/{path}");
    std::fs::write(&full, value).map_err(|e| DataplaneError::Sysctl {
        path: full,
        source: e,
    })
}

/// As [`set`], logging instead of failing (settings Calico treats as best effort).
pub fn set_best_effort(path: &str, value: &str) {
    if let Err(e) = set(path, value) {
        log::warn!("{e}");
    }
}

/// Reads `/proc/sys/net/<path>`, trimmed.
pub fn get(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/net/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}
