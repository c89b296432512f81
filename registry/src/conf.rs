//! Mirrors, insecure and blocked registries from containers-registries.conf(5)
//! (version 2, the `[[registry]]` tables), as podman, buildah and skopeo read it.
//!
//! The file is `$CONTAINERS_REGISTRIES_CONF`, else `~/.config/containers/registries.conf`
//! when it exists, else `/etc/containers/registries.conf`; `*.conf` drop-ins in the
//! `registries.conf.d` directory beside it are read after it, in name order, and a
//! table replaces an earlier one with the same prefix. Other tables (`aliases`,
//! `unqualified-search-registries`, ...) are not kiln's business and are ignored.

use crate::Error;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    registry: Vec<Entry>,
}

/// One `[[registry]]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Entry {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<Mirror>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    /// `all` (default), `digest-only` or `tag-only`.
    #[serde(default)]
    pull_from_mirror: Option<String>,
}

/// Where to reach an image: a name with the registry's location substituted, and
/// whether TLS may be skipped there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]/repository` (no tag or digest).
    pub repository: String,
    pub insecure: bool,
    /// Whether this is a mirror rather than the registry itself.
    pub mirror: bool,
}

impl Endpoint {
    pub fn host(&self) -> &str {
        self.repository
            .split_once('/')
            .map_or(self.repository.as_str(), |(h, _)| h)
    }

    pub fn path(&self) -> &str {
        self.repository.split_once('/').map_or("", |(_, p)| p)
    }
}

/// The parsed configuration (empty when there is no file).
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<Entry>,
    /// The files read, for messages.
    pub sources: Vec<PathBuf>,
}

impl Config {
    /// Reads the configuration the process environment points at.
    pub fn from_env() -> Result<Config, Error> {
        let main = match std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => {
                let user = std::env::var_os("XDG_CONFIG_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                    .map(|c| c.join("containers/registries.conf"));
                match user {
                    Some(u) if u.exists() => u,
                    _ => PathBuf::from("/etc/containers/registries.conf"),
                }
            }
        };
        Config::read(&main)
    }

    /// Reads `main` (if it exists) and its `registries.conf.d` drop-ins.
    pub fn read(main: &Path) -> Result<Config, Error> {
        let mut files = Vec::new();
        if main.exists() {
            files.push(main.to_path_buf());
        }
        let dropins = main.with_extension("conf.d");
        if let Ok(rd) = std::fs::read_dir(&dropins) {
            let mut more: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            more.sort();
            files.extend(more);
        }
        let mut config = Config::default();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| Error::Config {
                file: f.clone(),
                message: e.to_string(),
            })?;
            config.add(&f, &text)?;
        }
        Ok(config)
    }

    /// Adds one file's tables.
    pub fn add(&mut self, file: &Path, text: &str) -> Result<(), Error> {
        let bad = |message: String| Error::Config {
            file: file.to_path_buf(),
            message,
        };
        let parsed: File = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for mut e in parsed.registry {
            if e.prefix.is_empty() {
                e.prefix = e.location.clone();
            }
            if e.prefix.is_empty() {
                return Err(bad(
                    "a [[registry]] table needs a prefix or a location".into()
                ));
            }
            if e.prefix.starts_with("*.") && !e.location.is_empty() {
                return Err(bad(format!(
                    "the wildcard prefix {:?} cannot have a location",
                    e.prefix
                )));
            }
            for m in &e.mirror {
                match m.pull_from_mirror.as_deref() {
                    None | Some("all" | "digest-only" | "tag-only") => {}
                    Some(other) => {
                        return Err(bad(format!(
                            "pull-from-mirror = {other:?}: expected \"all\", \"digest-only\" or \"tag-only\""
                        )))
                    }
                }
            }
            self.entries.retain(|old| old.prefix != e.prefix);
            self.entries.push(e);
        }
        self.sources.push(file.to_path_buf());
        Ok(())
    }

    /// The table for `repository` (`host/path`): the longest matching prefix.
    fn entry(&self, repository: &str) -> Option<&Entry> {
        let host = repository.split('/').next().unwrap_or_default();
        self.entries
            .iter()
            .filter(|e| match e.prefix.strip_prefix('*') {
                // `*.example.com` matches hosts under example.com.
                Some(suffix) => host.ends_with(suffix),
                None => {
                    repository == e.prefix
                        || repository
                            .strip_prefix(e.prefix.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                }
            })
            .max_by_key(|e| e.prefix.len())
    }

    fn rewrite(e: &Entry, repository: &str, location: &str) -> String {
        if e.prefix.starts_with('*') || location.is_empty() {
            return repository.to_string();
        }
        format!("{location}{}", &repository[e.prefix.len()..])
    }

    /// The places to pull `repository` from, mirrors first; `by_digest` says whether
    /// the reference names a digest (mirrors may be limited to one kind).
    pub fn pull_endpoints(
        &self,
        repository: &str,
        by_digest: bool,
    ) -> Result<Vec<Endpoint>, Error> {
        let Some(e) = self.entry(repository) else {
            return Ok(vec![plain(repository)]);
        };
        self.check_blocked(e, repository)?;
        let mut v = Vec::new();
        for m in &e.mirror {
            let allowed = match m.pull_from_mirror.as_deref() {
                Some("digest-only") => by_digest,
                Some("tag-only") => !by_digest,
                _ => by_digest || !e.mirror_by_digest_only,
            };
            if allowed {
                v.push(Endpoint {
                    repository: Config::rewrite(e, repository, &m.location),
                    insecure: m.insecure,
                    mirror: true,
                });
            }
        }
        v.push(Endpoint {
            repository: Config::rewrite(e, repository, &e.location),
            insecure: e.insecure,
            mirror: false,
        });
        Ok(v)
    }

    /// Where to push `repository` (mirrors are for pulls only).
    pub fn push_endpoint(&self, repository: &str) -> Result<Endpoint, Error> {
        let Some(e) = self.entry(repository) else {
            return Ok(plain(repository));
        };
        self.check_blocked(e, repository)?;
        Ok(Endpoint {
            repository: Config::rewrite(e, repository, &e.location),
            insecure: e.insecure,
            mirror: false,
        })
    }

    /// Whether `host` is marked insecure (by a table for the host itself or a
    /// mirror located there).
    pub fn insecure_host(&self, host: &str) -> bool {
        let host_of = |l: &str| l.split('/').next().unwrap_or_default().to_string();
        self.entries.iter().any(|e| {
            (e.insecure
                && host_of(if e.location.is_empty() {
                    &e.prefix
                } else {
                    &e.location
                }) == host)
                || e.mirror
                    .iter()
                    .any(|m| m.insecure && host_of(&m.location) == host)
        })
    }

    fn check_blocked(&self, e: &Entry, repository: &str) -> Result<(), Error> {
        if e.blocked {
            return Err(Error::Blocked {
                repository: repository.to_string(),
                prefix: e.prefix.clone(),
                files: self
                    .sources
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(())
    }
}

fn plain(repository: &str) -> Endpoint {
    Endpoint {
        repository: repository.to_string(),
        insecure: false,
        mirror: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> Config {
        let mut c = Config::default();
        c.add(Path::new("registries.conf"), text).expect("parses");
        c
    }

    #[test]
    fn mirrors_come_first_and_locations_are_rewritten() {
        let c = conf(
            r#"
unqualified-search-registries = ["docker.io"]
[aliases]
"python" = "docker.io/library/python"

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "127.0.0.1:5000/hub"
[[registry.mirror]]
location = "mirror.example:5000"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
prefix = "docker.io/team"
location = "internal.example/team-images"
"#,
        );
        let e = c
            .pull_endpoints("docker.io/library/python", false)
            .expect("ok");
        let got: Vec<(&str, bool, bool)> = e
            .iter()
            .map(|e| (e.repository.as_str(), e.insecure, e.mirror))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:5000/hub/library/python", false, true),
                ("docker.io/library/python", false, false)
            ]
        );
        let e = c
            .pull_endpoints("docker.io/library/python", true)
            .expect("ok");
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].repository, "mirror.example:5000/library/python");
        assert_eq!(
            (e[1].host(), e[1].path()),
            ("mirror.example:5000", "library/python")
        );
        // The longest prefix wins; the boundary is a path segment.
        let e = c.push_endpoint("docker.io/team/app").expect("ok");
        assert_eq!(e.repository, "internal.example/team-images/app");
        let e = c.push_endpoint("docker.io/teamx/app").expect("ok");
        assert_eq!(e.repository, "docker.io/teamx/app");
        assert_eq!(
            c.pull_endpoints("quay.io/a/b", false).expect("ok"),
            [plain("quay.io/a/b")]
        );
        assert!(c.insecure_host("mirror.example:5000"));
        assert!(!c.insecure_host("docker.io"));
    }

    #[test]
    fn blocked_wildcards_and_bad_tables() {
        let c = conf(
            r#"
[[registry]]
prefix = "*.blocked.example"
blocked = true
[[registry]]
location = "plain.example:5000"
insecure = true
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.example"
"#,
        );
        let e = c
            .pull_endpoints("a.blocked.example/x/y", false)
            .expect_err("blocked");
        assert!(e.to_string().contains("blocked"), "{e}");
        assert!(c.push_endpoint("a.blocked.example/x").is_err());
        assert!(c.insecure_host("plain.example:5000"));
        // mirror-by-digest-only keeps tags away from the mirror.
        assert_eq!(
            c.pull_endpoints("plain.example:5000/a", false)
                .expect("ok")
                .len(),
            1
        );
        assert_eq!(
            c.pull_endpoints("plain.example:5000/a", true)
                .expect("ok")
                .len(),
            2
        );

        let mut c = Config::default();
        let e = c
            .add(Path::new("r.conf"), "[[registry]]\ninsecure = true\n")
            .expect_err("no prefix");
        assert!(e.to_string().starts_with("r.conf: "), "{e}");
        let e = c
            .add(
                Path::new("r.conf"),
                "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"b\"\npull-from-mirror = \"sometimes\"\n",
            )
            .expect_err("bad value");
        assert!(e.to_string().contains("pull-from-mirror"), "{e}");
        let e = c
            .add(Path::new("r.conf"), "[[registry]\n")
            .expect_err("bad toml");
        assert!(e.to_string().starts_with("r.conf: "), "{e}");
    }

    #[test]
    fn dropins_replace_tables_with_the_same_prefix() {
        let d = tempfile::tempdir().expect("tmp");
        let main = d.path().join("registries.conf");
        std::fs::write(
            &main,
            "[[registry]]\nlocation = \"r.example\"\nblocked = true\n",
        )
        .expect("w");
        std::fs::create_dir(d.path().join("registries.conf.d")).expect("mkdir");
        std::fs::write(
            d.path().join("registries.conf.d/10-unblock.conf"),
            "[[registry]]\nlocation = \"r.example\"\n",
        )
        .expect("w");
        let c = Config::read(&main).expect("reads");
        assert!(c.pull_endpoints("r.example/a", false).is_ok());
        assert_eq!(c.sources.len(), 2);
        let c = Config::read(&d.path().join("absent.conf")).expect("no file is no config");
        assert!(c.sources.is_empty());
    }
}
