use weft_core::cni::error::clip;
use weft_core::cni::{CniArgs, CniError, Code};

/// Set by weft-cni on every plugin it runs (one more than its own), so a
/// weft-cni reached again through its own IPAM delegation, directly or
/// through other plugins, knows it is looping.
pub const DEPTH_VAR: &str = "WEFT_CNI_DEPTH";

/// The deepest a weft-cni may find itself: delegated IPAM never needs
/// weft-cni again, so anything past a couple of levels is a loop, and each
/// level is a process held open.
pub const MAX_DEPTH: u32 = 2;

/// The CNI_* environment, captured once so the verbs can be driven from
/// tests without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    /// How many weft-cni delegations this process runs under (DEPTH_VAR).
    pub depth: u32,
}

impl Env {
    pub fn from_process() -> Env {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
            // Unparseable counts as too deep: a loop must not reset itself
            // by garbling the counter.
            depth: get(DEPTH_VAR).map_or(0, |d| d.trim().parse().unwrap_or(u32::MAX)),
        }
    }

    /// Refuses to go on when weft-cni is running inside its own delegation
    /// chain deeper than any real configuration needs.
    pub fn check_depth(&self) -> Result<(), CniError> {
        if self.depth > MAX_DEPTH {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!(
                    "ipam.type: weft-cni was run {} levels deep inside its own IPAM delegation ({DEPTH_VAR}); the IPAM plugin chain loops back to weft-cni",
                    self.depth
                ),
            ));
        }
        Ok(())
    }

    fn missing(var: &str) -> CniError {
        CniError::new(Code::InvalidEnv, format!("{var}: required but not set"))
    }

    /// The container ID, validated as the spec asks: alphanumerics plus
    /// `_ . -`, starting with an alphanumeric.
    pub fn container_id(&self) -> Result<&str, CniError> {
        let id = self
            .container_id
            .as_deref()
            .ok_or_else(|| Self::missing("CNI_CONTAINERID"))?;
        let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!(
                    "CNI_CONTAINERID: {} must be alphanumerics, '_', '.' or '-'",
                    clip(id)
                ),
            ));
        }
        Ok(id)
    }

    /// The interface name, validated as Linux requires.
    pub fn ifname(&self) -> Result<&str, CniError> {
        let n = self
            .ifname
            .as_deref()
            .ok_or_else(|| Self::missing("CNI_IFNAME"))?;
        if n.len() > 15
            || n == "."
            || n == ".."
            || n.contains(['/', ':'])
            || n.contains(char::is_whitespace)
        {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_IFNAME: {} is not a valid interface name", clip(n)),
            ));
        }
        Ok(n)
    }

    pub fn netns(&self) -> Result<&str, CniError> {
        self.netns
            .as_deref()
            .ok_or_else(|| Self::missing("CNI_NETNS"))
    }

    pub fn cni_args(&self) -> Result<CniArgs, CniError> {
        CniArgs::parse(self.args.as_deref().unwrap_or(""))
    }
}
