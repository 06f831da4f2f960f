//! CNI spec versions, and which verbs and result shapes each one has.

use super::error::{clip, CniError, Code};
use std::fmt;

/// The versions weft-cni accepts and can answer in, oldest first.
pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest version, used for VERSION and for errors when the request's
/// own version could not be read.
pub const LATEST: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses a version this plugin supports; anything else is error 1.
    pub fn parse_supported(s: &str) -> Result<Version, CniError> {
        if !SUPPORTED.contains(&s) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("cniVersion {} is not supported", clip(s)),
            )
            .with_details(format!("supported versions: {}", SUPPORTED.join(", "))));
        }
        let mut it = s.split('.').map(|p| p.parse::<u16>().unwrap_or(0));
        Ok(Version(
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
        ))
    }

    /// Results before 1.0.0 tag each IP with its family ("version": "4").
    pub fn ips_carry_family(self) -> bool {
        self < Self::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The VERSION verb's answer.
pub fn version_json(cni_version: &str) -> String {
    serde_json::json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert!(Version::parse_supported("0.3.1").unwrap() < Version::V0_4_0);
        assert_eq!(
            Version::parse_supported("1.1.0").unwrap().to_string(),
            "1.1.0"
        );
        assert_eq!(
            Version::parse_supported("9.9.9").unwrap_err().code,
            Code::IncompatibleVersion
        );
    }
}
