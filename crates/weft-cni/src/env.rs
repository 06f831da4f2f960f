use weft_core::cni::{CniArgs, CniError, Code};

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
        }
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
                format!("CNI_CONTAINERID: {id:?} must be alphanumerics, '_', '.' or '-'"),
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
                format!("CNI_IFNAME: {n:?} is not a valid interface name"),
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
