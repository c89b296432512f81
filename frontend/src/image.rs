//! The OCI image configuration as JSON (image-spec `config.md`), kept as plain serde
//! types so that fields the frontend does not interpret (Healthcheck, OnBuild, ...)
//! survive from a base image into the result through `extra`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `application/vnd.oci.image.config.v1+json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

impl ImageConfig {
    /// The platform the config describes.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// The `config` object: what a container started from the image gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Value>,
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "Volumes",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Value>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    #[serde(
        rename = "ArgsEscaped",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub args_escaped: Option<bool>,
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<Healthcheck>,
    #[serde(rename = "OnBuild", default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(rename = "Shell", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Fields kiln carries through unchanged.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `HEALTHCHECK`: durations in nanoseconds, as Docker stores them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Healthcheck {
    #[serde(rename = "Test", default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `docker history` row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ContainerConfig {
    /// The environment as ordered (name, value) pairs.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    /// Sets `name=value`, replacing an earlier value in place as Docker does.
    pub fn set_env(&mut self, name: &str, value: &str) {
        let entry = format!("{name}={value}");
        match self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == name)
        {
            Some(slot) => *slot = entry,
            None => self.env.push(entry),
        }
    }
}

/// An OS/architecture/variant triple, as in `--platform linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `--platform a,b` (default: the host's), normalized, without repeats.
    pub fn parse_list(arg: Option<&str>) -> Result<Vec<Platform>, String> {
        let Some(arg) = arg.filter(|a| !a.trim().is_empty()) else {
            return Ok(vec![Platform::host()]);
        };
        let mut v: Vec<Platform> = Vec::new();
        for part in arg.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = match part {
                "local" => Platform::host(),
                _ => Platform::parse(part).ok_or_else(|| {
                    format!("--platform {part:?}: expected os/arch[/variant], such as linux/amd64, linux/arm64 or linux/arm/v7")
                })?,
            };
            if !v.contains(&p) {
                v.push(p);
            }
        }
        if v.is_empty() {
            return Err(format!("--platform {arg:?} names no platform"));
        }
        Ok(v)
    }

    /// The platform kiln itself runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "arm" => "arm",
            other => other,
        };
        let variant = (architecture == "arm").then(|| "v7".to_string());
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant,
        }
    }

    /// Parses `os/arch[/variant]` (or a bare architecture, on linux) and normalizes
    /// it as containerd's `platforms.Normalize` does: `aarch64` is `arm64`, `x86_64`
    /// is `amd64`, `arm64/v8` is `arm64`, a bare `arm` is `arm/v7`.
    pub fn parse(s: &str) -> Option<Platform> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [arch] if !arch.is_empty() && *arch != "linux" => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => return None,
        };
        if os.is_empty() || arch.is_empty() || variant == Some("") {
            return None;
        }
        let (architecture, variant) = match (arch, variant) {
            ("x86_64" | "x86-64" | "amd64", Some("v1")) => ("amd64", None),
            ("x86_64" | "x86-64", v) => ("amd64", v),
            ("aarch64" | "arm64", Some("v8") | None) => ("arm64", None),
            ("aarch64", v) => ("arm64", v),
            ("armhf", None) => ("arm", Some("v7")),
            ("armel", None) => ("arm", Some("v6")),
            ("arm", None) => ("arm", Some("v7")),
            ("i386" | "i486" | "i586" | "i686", v) => ("386", v),
            (a, v) => (a, v),
        };
        Some(Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        })
    }

    /// `linux_arm64_v8`-style directory name buildx uses for per-platform outputs.
    pub fn dir_name(&self) -> String {
        self.to_string().replace('/', "_")
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_config_fields_survive() {
        let raw = r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Healthcheck":{"Test":["NONE"]},"Domainname":"x"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cfg: ImageConfig = serde_json::from_str(raw).expect("parses");
        assert_eq!(cfg.config.env, vec!["A=1"]);
        let out = serde_json::to_string(&cfg).expect("serializes");
        assert!(
            out.contains("\"Healthcheck\":{\"Test\":[\"NONE\"]}"),
            "{out}"
        );
        assert!(out.contains("\"Domainname\":\"x\""), "{out}");
    }

    #[test]
    fn set_env_replaces_in_place() {
        let mut c = ContainerConfig {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            ..Default::default()
        };
        c.set_env("PATH", "/usr/bin");
        c.set_env("B", "2");
        assert_eq!(c.env, vec!["PATH=/usr/bin", "A=1", "B=2"]);
    }

    #[test]
    fn platform_round_trip() {
        let p = Platform::parse("linux/arm/v7").expect("valid");
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("linux/").is_none());
        assert!(Platform::parse("linux/arm64/v8/x").is_none());
        for (given, normal) in [
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("arm64", "linux/arm64"),
            ("Linux/X86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/i686", "linux/386"),
            ("linux/riscv64", "linux/riscv64"),
        ] {
            let p = Platform::parse(given).expect(given);
            assert_eq!(p.to_string(), normal, "{given}");
        }
        assert_eq!(
            Platform::parse("linux/arm/v7").expect("ok").dir_name(),
            "linux_arm_v7"
        );
    }
}
