//! Results, held in one internal shape and rendered in whatever version the
//! request asked for.

use super::error::{CniError, Code};
use super::version::Version;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the prefix of its subnet, as host-local reports it.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// Renders the result in the requested version's shape.
    pub fn to_json(&self, version: Version) -> Value {
        let family = |a: &IpNet| if a.addr().is_ipv4() { "4" } else { "6" };
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = serde_json::Map::new();
                if version.ips_carry_family() {
                    o.insert("version".into(), json!(family(&ip.address)));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(g) = ip.gateway {
                    o.insert("gateway".into(), json!(g.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), json!(version.to_string()));
        if version < Version::V0_3_0 {
            // 0.1.0/0.2.0: one ip4 and one ip6 object, no interfaces.
            for (key, v4) in [("ip4", true), ("ip6", false)] {
                if let Some(ip) = self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4) {
                    let mut o = json!({"ip": ip.address.to_string()});
                    if let Some(g) = ip.gateway {
                        o["gateway"] = json!(g.to_string());
                    }
                    let rs: Vec<&Value> = self
                        .routes
                        .iter()
                        .zip(&routes)
                        .filter(|(r, _)| r.dst.addr().is_ipv4() == v4)
                        .map(|(_, j)| j)
                        .collect();
                    if !rs.is_empty() {
                        o["routes"] = json!(rs);
                    }
                    out.insert(key.into(), o);
                }
            }
        } else {
            let ifaces: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = json!({"name": i.name, "mac": i.mac});
                    if version >= Version::V1_1_0 {
                        if let Some(m) = i.mtu {
                            o["mtu"] = json!(m);
                        }
                    }
                    if let Some(s) = &i.sandbox {
                        o["sandbox"] = json!(s);
                    }
                    o
                })
                .collect();
            if !ifaces.is_empty() {
                out.insert("interfaces".into(), json!(ifaces));
            }
            if !ips.is_empty() {
                out.insert("ips".into(), json!(ips));
            }
            if !routes.is_empty() {
                out.insert("routes".into(), json!(routes));
            }
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or(Value::Null),
        );
        Value::Object(out)
    }

    /// Reads a result of any 0.3.0+ version (a prevResult or a delegated
    /// IPAM plugin's answer). 0.1/0.2 shapes are read through `ip4`/`ip6`.
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let bad = |what: &str| CniError::new(Code::Decode, format!("result: {what}"));
        let mut out = CniResult::default();
        if let Some(ifaces) = v.get("interfaces").and_then(Value::as_array) {
            for i in ifaces {
                out.interfaces.push(Interface {
                    name: i
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    mac: i
                        .get("mac")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                    sandbox: i.get("sandbox").and_then(Value::as_str).map(String::from),
                });
            }
        }
        let parse_net = |s: Option<&Value>| -> Result<IpNet, CniError> {
            s.and_then(Value::as_str)
                .ok_or_else(|| bad("address missing"))?
                .parse::<IpNet>()
                .map_err(|_| bad("address is not a CIDR"))
        };
        let parse_ip = |s: Option<&Value>| -> Result<Option<IpAddr>, CniError> {
            match s.and_then(Value::as_str) {
                None | Some("") => Ok(None),
                Some(s) => s.parse().map(Some).map_err(|_| bad("gateway is not an IP")),
            }
        };
        let push_routes = |rs: Option<&Value>, out: &mut CniResult| -> Result<(), CniError> {
            for r in rs.and_then(Value::as_array).into_iter().flatten() {
                out.routes.push(Route {
                    dst: parse_net(r.get("dst"))?,
                    gw: parse_ip(r.get("gw"))?,
                });
            }
            Ok(())
        };
        if let Some(ips) = v.get("ips").and_then(Value::as_array) {
            for ip in ips {
                out.ips.push(IpConfig {
                    address: parse_net(ip.get("address"))?,
                    gateway: parse_ip(ip.get("gateway"))?,
                    interface: ip
                        .get("interface")
                        .and_then(Value::as_u64)
                        .map(|i| i as usize),
                });
            }
        }
        for key in ["ip4", "ip6"] {
            if let Some(o) = v.get(key) {
                out.ips.push(IpConfig {
                    address: parse_net(o.get("ip"))?,
                    gateway: parse_ip(o.get("gateway"))?,
                    interface: None,
                });
                push_routes(o.get("routes"), &mut out)?;
            }
        }
        push_routes(v.get("routes"), &mut out)?;
        if let Some(d) = v.get("dns") {
            out.dns = serde_json::from_value(d.clone()).map_err(|_| bad("dns is malformed"))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: Some(1500),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: "10.1.0.2/16".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn renders_per_version() {
        let r = sample();
        let v040 = r.to_json(Version::V0_4_0);
        assert_eq!(v040["ips"][0]["version"], "4");
        assert!(v040["interfaces"][0].get("mtu").is_none());
        let v110 = r.to_json(Version::V1_1_0);
        assert!(v110["ips"][0].get("version").is_none());
        assert_eq!(v110["interfaces"][0]["mtu"], 1500);
        let v020 = r.to_json(Version(0, 2, 0));
        assert_eq!(v020["ip4"]["ip"], "10.1.0.2/16");
    }

    #[test]
    fn round_trips() {
        let r = sample();
        for v in [
            Version::V0_3_0,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ] {
            let mut back = CniResult::from_json(&r.to_json(v)).unwrap();
            if v < Version::V1_1_0 {
                back.interfaces[0].mtu = Some(1500);
            }
            assert_eq!(back, r, "{v}");
        }
    }
}
