//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
//!
//! Like the reference plugins, an unknown key is an error unless
//! `IgnoreUnknown=1` (or `true`) is among the pairs.

use super::error::{clip, CniError, Code};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ips: Vec<String>,
    pub mac: Option<String>,
    pub k8s_pod_namespace: Option<String>,
    pub k8s_pod_name: Option<String>,
    pub k8s_pod_infra_container_id: Option<String>,
    pub k8s_pod_uid: Option<String>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let mut out = CniArgs::default();
        let pairs: Vec<(&str, &str)> = raw
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once('=').ok_or_else(|| {
                    CniError::new(
                        Code::InvalidEnv,
                        format!("CNI_ARGS: {} is not KEY=VALUE", clip(p)),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let ignore_unknown = pairs.iter().any(|(k, v)| {
            *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
        });
        for (k, v) in pairs {
            match k {
                "IgnoreUnknown" => {}
                // The reference host-local accepts a comma-separated list.
                "IP" => out
                    .ips
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(String::from)),
                "MAC" => out.mac = Some(v.to_string()),
                "K8S_POD_NAMESPACE" => out.k8s_pod_namespace = Some(v.to_string()),
                "K8S_POD_NAME" => out.k8s_pod_name = Some(v.to_string()),
                "K8S_POD_INFRA_CONTAINER_ID" => {
                    out.k8s_pod_infra_container_id = Some(v.to_string())
                }
                "K8S_POD_UID" => out.k8s_pod_uid = Some(v.to_string()),
                _ if ignore_unknown => {}
                _ => {
                    return Err(CniError::new(
                        Code::InvalidEnv,
                        format!(
                            "CNI_ARGS: unknown key {} (set IgnoreUnknown=1 to allow it)",
                            clip(k)
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_rejects_unknown() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5;Foo=bar").unwrap();
        assert_eq!(a.ips, vec!["10.0.0.5"]);
        assert_eq!(a.k8s_pod_name.as_deref(), Some("web"));
        assert_eq!(
            CniArgs::parse("Foo=bar").unwrap_err().code,
            Code::InvalidEnv
        );
        assert_eq!(CniArgs::parse("junk").unwrap_err().code, Code::InvalidEnv);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }
}
