//! `cni-noop`: a CNI plugin that does nothing, as fast as possible.
//!
//! It is the baseline of `scripts/bench-cni`: timing a chain made of only this
//! plugin measures the runtime's own cost (driver start-up, libcni, one exec),
//! which is then subtracted from the timings of the real chain.
//!
//! Behaviour, by `CNI_COMMAND`:
//! - `VERSION`: prints the supported versions (0.1.0 … 1.1.0).
//! - `ADD`: prints the stdin's top-level `prevResult` unchanged (so it can sit
//!   anywhere in a chain), else `{"cniVersion":"<stdin cniVersion>"}`.
//! - `DEL`, `CHECK`, `GC`, `STATUS`: print nothing.
//!
//! Only std is used, and the JSON handling is deliberately minimal: a scanner
//! that walks the top-level object and returns the raw text of a member's
//! value, respecting strings so braces inside them do not confuse it.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::process::ExitCode;

const VERSION_INFO: &str = r#"{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#;

// CNI well-known error codes used here.
const ERR_INVALID_ENV: u32 = 4;
const ERR_IO: u32 = 5;
const ERR_DECODING: u32 = 6;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            // The error object on stdout is what a runtime parses; the text on
            // stderr is for humans. Output failures here cannot be reported.
            let obj = format!("{{\"code\":{code},\"msg\":\"{}\"}}\n", json_escape(&msg));
            let _ = std::io::stdout().write_all(obj.as_bytes());
            let _ = writeln!(std::io::stderr(), "cni-noop: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), (u32, String)> {
    // Read stdin fully in every case: a runtime writing the config must never
    // see a broken pipe.
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .map_err(|e| (ERR_IO, format!("reading stdin: {e}")))?;

    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    match command.as_str() {
        "VERSION" => emit(VERSION_INFO.as_bytes()),
        "ADD" => {
            let members = TopLevel::parse(&input)
                .ok_or((ERR_DECODING, "stdin is not a JSON object".to_string()))?;
            if let Some(prev) = members.get(b"prevResult") {
                emit(prev)
            } else {
                // A missing cniVersion yields "": libcni then assumes the
                // config's version, which is the same thing.
                let version = members
                    .get(b"cniVersion")
                    .and_then(json_string_body)
                    .unwrap_or(b"");
                let mut out = Vec::with_capacity(version.len() + 16);
                out.extend_from_slice(b"{\"cniVersion\":\"");
                out.extend_from_slice(version);
                out.extend_from_slice(b"\"}");
                emit(&out)
            }
        }
        "DEL" | "CHECK" | "GC" | "STATUS" => Ok(()),
        "" => Err((ERR_INVALID_ENV, "CNI_COMMAND is not set".to_string())),
        other => Err((ERR_INVALID_ENV, format!("unknown CNI_COMMAND: {other}"))),
    }
}

fn emit(bytes: &[u8]) -> Result<(), (u32, String)> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| (ERR_IO, format!("writing stdout: {e}")))
}

/// The members of a top-level JSON object as (raw key, raw value text) pairs.
struct TopLevel<'a> {
    members: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> TopLevel<'a> {
    fn parse(s: &'a [u8]) -> Option<Self> {
        let mut members = Vec::new();
        let mut i = skip_ws(s, 0);
        if s.get(i) != Some(&b'{') {
            return None;
        }
        i = skip_ws(s, i + 1);
        if s.get(i) == Some(&b'}') {
            return Some(Self { members });
        }
        loop {
            let key_end = skip_string(s, i)?;
            let key = &s[i + 1..key_end - 1];
            i = skip_ws(s, key_end);
            if s.get(i) != Some(&b':') {
                return None;
            }
            let start = skip_ws(s, i + 1);
            let end = skip_value(s, start)?;
            members.push((key, &s[start..end]));
            i = skip_ws(s, end);
            match s.get(i) {
                Some(b',') => i = skip_ws(s, i + 1),
                Some(b'}') => return Some(Self { members }),
                _ => return None,
            }
        }
    }

    /// The last occurrence wins, as with Go's encoding/json.
    fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.members
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|&(_, v)| v)
    }
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `s[i]` must be `"`; returns the index just past the closing quote.
fn skip_string(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match s.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// Returns the index just past the value starting at `s[i]`. Objects and arrays
/// are matched by depth counting, skipping over strings; scalars run to the
/// next delimiter.
fn skip_value(s: &[u8], i: usize) -> Option<usize> {
    match s.get(i)? {
        b'"' => skip_string(s, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match s.get(j)? {
                    b'"' => {
                        j = skip_string(s, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(c) = s.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The bytes between the quotes of a JSON string value (escapes left as is,
/// which is fine for version strings), or None if it is not a string.
fn json_string_body(v: &[u8]) -> Option<&[u8]> {
    (v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"').then(|| &v[1..v.len() - 1])
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}
