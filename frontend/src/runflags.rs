//! The build-wide settings of every RUN that `kiln build` takes as flags, as buildx
//! passes them to BuildKit's frontend: `--network`, `--add-host`, `--shm-size`,
//! `--ulimit`, and the entitlements of `--allow`. Each becomes part of every RUN step
//! (and so of its cache key), as in BuildKit's ExecOp.

use crate::Network;
use serde::Serialize;

/// What every RUN of the build starts from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunDefaults {
    /// `--network`: what a RUN without `--network` (or with `--network=default`) gets.
    pub network: Network,
    /// `--add-host`, in order.
    pub extra_hosts: Vec<HostEntry>,
    /// `--shm-size`, in bytes (parsed by the caller, as docker sizes).
    pub shm_size: Option<u64>,
    /// `--ulimit`, in order.
    pub ulimits: Vec<Ulimit>,
    /// `--allow network.host` (or `--network host`, which buildx treats as asking for it).
    pub allow_network_host: bool,
}

/// One `--add-host NAME:IP` line of the RUN's /etc/hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HostEntry {
    pub host: String,
    pub ip: String,
}

/// One `--ulimit NAME=SOFT[:HARD]` (`-1`: unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// The limits Docker's `--ulimit` names (go-units).
pub const ULIMITS: [&str; 16] = [
    "cpu",
    "fsize",
    "data",
    "stack",
    "core",
    "rss",
    "nproc",
    "nofile",
    "memlock",
    "as",
    "locks",
    "sigpending",
    "msgqueue",
    "nice",
    "rtprio",
    "rttime",
];

/// `--network`: buildx takes `default`, `none` and `host`.
pub fn parse_network(v: &str) -> Result<Network, String> {
    match v {
        "" | "default" => Ok(Network::Default),
        "none" => Ok(Network::None),
        "host" => Ok(Network::Host),
        other => Err(format!(
            "--network {other:?}: expected default, none or host (kiln has no named networks)"
        )),
    }
}

/// `--add-host`: `NAME:IP` or `NAME=IP`, the IP possibly in brackets, several IPs
/// separated by commas (one line each), as buildx takes it. `host-gateway` is refused:
/// kiln's RUN shares the host's network, so the host is `127.0.0.1` already.
pub fn parse_add_host(v: &str) -> Result<Vec<HostEntry>, String> {
    let bad = || format!("--add-host {v:?}: expected NAME:IP (e.g. db.local:10.0.0.2)");
    let (host, ips) = v
        .split_once('=')
        .or_else(|| v.split_once(':'))
        .ok_or_else(bad)?;
    if host.is_empty() || ips.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    if ips == "host-gateway" {
        return Err(format!(
            "--add-host {v:?}: host-gateway is a docker engine address; RUN shares the host's network here, so use 127.0.0.1"
        ));
    }
    ips.split(',')
        .map(|ip| {
            let ip = ip
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(ip);
            ip.parse::<std::net::IpAddr>()
                .map(|ip| HostEntry {
                    host: host.to_string(),
                    ip: ip.to_string(),
                })
                .map_err(|_| format!("--add-host {v:?}: {ip:?} is not an IP address"))
        })
        .collect()
}

/// `--ulimit NAME=SOFT[:HARD]`, as Docker's go-units parses it.
pub fn parse_ulimit(v: &str) -> Result<Ulimit, String> {
    let (name, limits) = v.split_once('=').ok_or_else(|| {
        format!("--ulimit {v:?}: expected NAME=SOFT[:HARD] (e.g. nofile=1024:2048)")
    })?;
    if !ULIMITS.contains(&name) {
        return Err(format!(
            "--ulimit {v:?}: invalid ulimit type {name:?} (expected one of {})",
            ULIMITS.join(", ")
        ));
    }
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (s, h),
        None => (limits, limits),
    };
    let num = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("--ulimit {v:?}: {s:?} is not a number"))
    };
    let (soft, hard) = (num(soft)?, num(hard)?);
    // -1 is unlimited; anything else must fit under the hard limit.
    if hard != -1 && (soft == -1 || soft > hard) {
        return Err(format!(
            "--ulimit {v:?}: soft limit {soft} is above the hard limit {hard}"
        ));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// An `--allow` entitlement, as BuildKit names them. What kiln can grant is taken;
/// the others are refused with the reason.
pub fn parse_allow(v: &str, run: &mut RunDefaults) -> Result<(), String> {
    match v {
        "network.host" => {
            run.allow_network_host = true;
            Ok(())
        }
        "security.insecure" => Err(
            "--allow security.insecure: kiln runs rootless and cannot grant RUN --security=insecure (a privileged container)".into(),
        ),
        d if d == "device" || d.starts_with("device=") => Err(format!(
            "--allow {d}: kiln does not pass devices into RUN (it has no CDI support)"
        )),
        other => Err(format!(
            "--allow {other:?}: unknown entitlement (expected network.host, security.insecure or device)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_takes_buildx_forms() {
        let one = |h: &str, ip: &str| HostEntry {
            host: h.into(),
            ip: ip.into(),
        };
        assert_eq!(
            parse_add_host("db:10.0.0.2"),
            Ok(vec![one("db", "10.0.0.2")])
        );
        assert_eq!(
            parse_add_host("db=10.0.0.2"),
            Ok(vec![one("db", "10.0.0.2")])
        );
        assert_eq!(parse_add_host("v6=[::1]"), Ok(vec![one("v6", "::1")]));
        assert_eq!(parse_add_host("v6:::1"), Ok(vec![one("v6", "::1")]));
        assert_eq!(
            parse_add_host("two=1.2.3.4,[::2]"),
            Ok(vec![one("two", "1.2.3.4"), one("two", "::2")])
        );
        assert!(parse_add_host("db").is_err());
        assert!(parse_add_host(":1.2.3.4").is_err());
        assert!(parse_add_host("db:not-an-ip").is_err());
        assert!(parse_add_host("db:host-gateway").is_err_and(|e| e.contains("host-gateway")));
    }

    #[test]
    fn ulimits_parse_as_docker_does() {
        assert_eq!(
            parse_ulimit("nofile=1024:2048"),
            Ok(Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048
            })
        );
        assert_eq!(
            parse_ulimit("core=-1").map(|u| (u.soft, u.hard)),
            Ok((-1, -1))
        );
        assert_eq!(
            parse_ulimit("nproc=10").map(|u| (u.soft, u.hard)),
            Ok((10, 10))
        );
        assert!(parse_ulimit("nofile=2048:1024").is_err());
        assert!(parse_ulimit("files=1").is_err_and(|e| e.contains("invalid ulimit type")));
        assert!(parse_ulimit("nofile").is_err());
        assert!(parse_ulimit("nofile=a:b").is_err());
    }

    #[test]
    fn entitlements_kiln_cannot_grant_are_refused_by_name() {
        let mut r = RunDefaults::default();
        assert_eq!(parse_allow("network.host", &mut r), Ok(()));
        assert!(r.allow_network_host);
        assert!(parse_allow("security.insecure", &mut r).is_err_and(|e| e.contains("rootless")));
        assert!(parse_allow("device=/dev/kvm", &mut r).is_err());
        assert!(parse_allow("fs.read", &mut r).is_err_and(|e| e.contains("unknown")));
        assert_eq!(parse_network("none"), Ok(Network::None));
        assert!(parse_network("bridge").is_err());
    }
}
