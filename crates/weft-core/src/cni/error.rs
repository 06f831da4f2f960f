//! CNI error results. The codes are the spec's well-known ones, so runtimes can
//! act on them (retry on 11, report misconfiguration on 7, and so on).

use serde::Serialize;
use std::fmt;

/// The spec's well-known error codes (SPEC.md, "Error").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    ContainerUnknown = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    LimitedConnectivity = 51,
    /// Plugin-specific failures (kernel refused an operation, and so on).
    Internal = 100,
    /// Plugin-specific: the verb did all it could, but found state it could
    /// not read and so left alone (GC keeping a torn reservation file, say).
    /// Nothing failed; someone should look at what the message names.
    Inconclusive = 101,
}

/// An error as the plugin reports it on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

/// The most of any one value (a name, an ID, an address as given) that an
/// error message repeats. Errors are read by people and logged by runtimes:
/// a 1 MB network name must not become a 1 MB log line.
pub const MAX_FIELD: usize = 256;

/// The most of a whole message or details text: a backstop for text we do
/// not build ourselves (a decoder's message quoting the input, a delegated
/// plugin's error).
pub const MAX_MSG: usize = 2048;

/// `s` quoted as `{:?}` would, cut to `MAX_FIELD` bytes with an ellipsis,
/// for echoing a value from the configuration or environment into an error.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return format!("{s:?}");
    }
    let cut = floor_char_boundary(s, MAX_FIELD);
    let q = format!("{:?}", &s[..cut]);
    format!("{}…\"", &q[..q.len() - 1])
}

/// Cuts `s` to at most `max` bytes, on a character boundary, marking the cut.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = floor_char_boundary(&s, max - '…'.len_utf8());
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: truncate(msg.into(), MAX_MSG),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = truncate(details.into(), MAX_MSG);
        self
    }

    /// Renders the error JSON. `cni_version` is the version of the request
    /// when it could be read, else the newest one we speak.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{}}}", self.code as u32))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code as u32)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

/// Error 7 naming the offending field.
pub fn invalid_config_path(field: &str, msg: impl std::fmt::Display) -> CniError {
    CniError::new(Code::InvalidConfig, format!("{field}: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_carries_code_and_omits_empty_details() {
        let e = CniError::new(Code::InvalidConfig, "ipam.ranges[0][0].subnet: bad");
        assert_eq!(
            e.to_json("1.1.0"),
            r#"{"cniVersion":"1.1.0","code":7,"msg":"ipam.ranges[0][0].subnet: bad"}"#
        );
        let e = e.with_details("x");
        assert!(e.to_json("1.0.0").ends_with(r#""details":"x"}"#));
    }

    #[test]
    fn echoed_values_and_messages_are_bounded() {
        assert_eq!(clip("eth0"), "\"eth0\"");
        let huge = "é".repeat(1 << 19); // 1 MiB, two bytes a character
        let c = clip(&huge);
        assert!(c.len() <= MAX_FIELD + 8, "{}", c.len());
        assert!(c.starts_with("\"é") && c.ends_with("…\""), "{c}");
        let e = CniError::new(Code::InvalidConfig, huge.clone()).with_details(huge);
        assert!(e.msg.len() <= MAX_MSG && e.msg.ends_with('…'));
        assert!(e.details.len() <= MAX_MSG && e.details.ends_with('…'));
        assert!(e.to_json("1.1.0").len() < 2 * MAX_MSG + 100);
    }
}
