//! What `kiln du` reports and what `kiln prune` removes.
//!
//! The store's objects are snapshots, blobs and cache-mount directories; its entries
//! are build records (a step's result or a pulled image, see [`crate::records`]) and
//! cache mounts. An entry keeps the objects it names; an object no entry names is
//! dangling and always goes. Pruning picks entries (all of them, or those unused for a
//! while, or the least recently used until the store fits a size), removes them, and
//! with them every object no remaining entry names.
//!
//! Sizes are disk usage (allocated blocks, hard links counted once), as `du` reports
//! them. Snapshot trees may hold directories only the namespace's root can read, so
//! the caller measures directories (in the namespace helper) and passes the sizes in.

use crate::records::Kind;
use crate::tree::disk_bytes;
use crate::{Context, Result, Store};
use fs_err as fs;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One thing a store object can be.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Object {
    Snapshot(String),
    Blob(String),
    CacheMount(String),
}

/// A line of `kiln du --verbose`: a record or a cache mount.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record's key, or the cache mount's directory name.
    pub id: String,
    pub kind: EntryKind,
    pub description: String,
    pub last_used: SystemTime,
    /// Disk use of what this entry made (a step's own layer: its snapshot and blob; a
    /// pulled image: its layers, manifest and config; a cache mount: its directory),
    /// plus its record file, as `docker buildx du` sizes a record.
    pub size: u64,
    /// The compressed size of the layers it made (as pushed), 0 for none.
    pub layer_bytes: u64,
    /// Whether other entries name some of what it made (later steps of its stage
    /// name its layer).
    pub shared: bool,
    objects: Vec<Object>,
    /// The part of `objects` the entry made itself.
    own: Vec<Object>,
    record_bytes: u64,
}

/// What an entry is, in `docker buildx du`'s words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    Regular,
    SourceImage,
    CacheMount,
    /// A record file that does not parse.
    Corrupt,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Regular => "regular",
            EntryKind::SourceImage => "source.image",
            EntryKind::CacheMount => "exec.cachemount",
            EntryKind::Corrupt => "corrupt",
        }
    }
}

/// Everything in a store, with sizes.
#[derive(Debug, Default)]
pub struct Inventory {
    pub entries: Vec<Entry>,
    pub sizes: BTreeMap<Object, u64>,
    /// Blobs that some record names as a layer (the rest are manifests, configs and
    /// leftovers).
    pub layer_blobs: HashSet<String>,
    /// Leftovers in `tmp/` and unfinished cache-mount directories.
    pub tmp: Vec<(PathBuf, u64)>,
}

/// Totals by kind for `kiln du`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// (count, bytes) per kind, in display order.
    pub rows: Vec<(&'static str, u64, u64)>,
    pub total: u64,
}

/// `kiln prune`'s options, as `docker buildx prune` takes them.
#[derive(Debug, Default, Clone)]
pub struct PruneOptions {
    /// Also remove pulled base images.
    pub all: bool,
    /// Only entries not used for this long (`--filter until=24h`).
    pub until: Option<Duration>,
    /// Keep this many bytes, removing least recently used entries first.
    pub keep_storage: Option<u64>,
}

/// What a prune removes.
#[derive(Debug, Default)]
pub struct Plan {
    pub entries: Vec<Entry>,
    /// Record keys to delete.
    pub records: Vec<String>,
    pub snapshots: Vec<String>,
    pub blobs: Vec<String>,
    pub cache_mounts: Vec<String>,
    pub tmp: Vec<PathBuf>,
    pub reclaimed: u64,
}

impl Inventory {
    /// Lists the store; `measure` gives the disk usage of directories (snapshots,
    /// cache mounts, temp leftovers), in order.
    pub fn scan<E: From<crate::Error>>(
        store: &Store,
        measure: impl Fn(&[PathBuf]) -> Result<Vec<u64>, E>,
    ) -> Result<Self, E> {
        let root = store.root();
        let mut dirs: Vec<(Object, PathBuf)> = Vec::new();
        for name in list(&store.snapshots_dir())? {
            if name != "empty" {
                dirs.push((Object::Snapshot(name.clone()), store.snapshot_path(&name)));
            }
        }
        let mut tmp_paths: Vec<PathBuf> = list(&root.join("tmp"))?
            .into_iter()
            .map(|n| root.join("tmp").join(n))
            .collect();
        // Remembered context file digests (a few bytes per file), the last snapshot
        // of each COPY from a context and the git repositories fetched (`git/`) go
        // with any prune: losing them costs one read of the context, one full copy,
        // one fetch.
        for hints in ["context-hashes", "copy-refs", "git", "sources"] {
            tmp_paths.extend(
                list(&root.join(hints))?
                    .into_iter()
                    .map(|n| root.join(hints).join(n)),
            );
        }
        let mounts_dir = root.join("cache-mounts");
        let mut lock_bytes: HashMap<String, u64> = HashMap::new();
        let mut mount_used: HashMap<String, SystemTime> = HashMap::new();
        for name in list(&mounts_dir)? {
            let p = mounts_dir.join(&name);
            match name.split_once('.') {
                None => {
                    let used = fs::symlink_metadata(&p)
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    mount_used.insert(name.clone(), used);
                    dirs.push((Object::CacheMount(name), p));
                }
                Some((id, "lock")) => {
                    let b = fs::symlink_metadata(&p)
                        .map(|m| disk_bytes(&m))
                        .unwrap_or(0);
                    lock_bytes.insert(id.to_string(), b);
                }
                Some(_) => tmp_paths.push(p),
            }
        }
        let mut paths: Vec<PathBuf> = dirs.iter().map(|(_, p)| p.clone()).collect();
        paths.extend(tmp_paths.iter().cloned());
        let measured = measure(&paths)?;
        let mut inv = Inventory::default();
        for (i, (o, _)) in dirs.iter().enumerate() {
            inv.sizes
                .insert(o.clone(), measured.get(i).copied().unwrap_or(0));
        }
        for (i, p) in tmp_paths.into_iter().enumerate() {
            let n = measured.get(dirs.len() + i).copied().unwrap_or(0);
            inv.tmp.push((p, n));
        }
        let blobs_dir = root.join("blobs/sha256");
        for name in list(&blobs_dir)? {
            let b = fs::symlink_metadata(blobs_dir.join(&name))
                .map(|m| disk_bytes(&m))
                .unwrap_or(0);
            inv.sizes.insert(Object::Blob(format!("sha256:{name}")), b);
        }
        for f in store.records()? {
            let (kind, description, mut objects, own, layer_bytes) = match &f.record {
                Some(r) => {
                    let kind = match r.kind {
                        Kind::Regular => EntryKind::Regular,
                        Kind::SourceImage => EntryKind::SourceImage,
                    };
                    let mut objects = Vec::new();
                    for l in &r.layers {
                        objects.push(Object::Snapshot(l.snapshot.clone()));
                        objects.push(Object::Blob(l.digest.clone()));
                        inv.layer_blobs.insert(l.digest.clone());
                    }
                    objects.extend(r.blobs.iter().map(|b| Object::Blob(b.clone())));
                    // What it made: every layer of a pulled image; a step's last layer
                    // when it added one.
                    let made: &[crate::records::Layer] = match (kind, r.produced, r.layers.last()) {
                        (EntryKind::SourceImage, _, _) => &r.layers,
                        (_, true, Some(_)) => &r.layers[r.layers.len() - 1..],
                        _ => &[],
                    };
                    let mut own: Vec<Object> = made
                        .iter()
                        .flat_map(|l| {
                            [
                                Object::Snapshot(l.snapshot.clone()),
                                Object::Blob(l.digest.clone()),
                            ]
                        })
                        .collect();
                    own.extend(r.blobs.iter().map(|b| Object::Blob(b.clone())));
                    let layer_bytes = made.iter().map(|l| l.size).sum();
                    (kind, r.description.clone(), objects, own, layer_bytes)
                }
                None => (EntryKind::Corrupt, String::new(), Vec::new(), Vec::new(), 0),
            };
            objects.sort();
            objects.dedup();
            inv.entries.push(Entry {
                id: f.key,
                kind,
                description,
                last_used: f.last_used,
                size: 0,
                layer_bytes,
                shared: false,
                objects,
                own,
                record_bytes: f.bytes,
            });
        }
        for (id, used) in mount_used {
            let lock = lock_bytes.get(&id).copied().unwrap_or(0);
            inv.entries.push(Entry {
                id: id.clone(),
                kind: EntryKind::CacheMount,
                description: "cache mount (RUN --mount=type=cache)".into(),
                last_used: used,
                size: 0,
                layer_bytes: 0,
                shared: false,
                objects: vec![Object::CacheMount(id.clone())],
                own: vec![Object::CacheMount(id)],
                record_bytes: lock,
            });
        }
        // Sizes: what each entry made; shared when another entry names it too. (A
        // blob in two entries' `own`, a layer two pulled images share, counts in both.)
        let refs = inv.refcounts(&vec![true; inv.entries.len()]);
        for e in &mut inv.entries {
            e.size = e.record_bytes
                + e.own
                    .iter()
                    .map(|o| inv.sizes.get(o).copied().unwrap_or(0))
                    .sum::<u64>();
            e.shared = e.own.iter().any(|o| refs.get(o).copied().unwrap_or(0) > 1);
        }
        inv.entries
            .sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.id.cmp(&b.id)));
        Ok(inv)
    }

    fn refcounts(&self, alive: &[bool]) -> HashMap<Object, usize> {
        let mut refs: HashMap<Object, usize> = HashMap::new();
        for (e, _) in self.entries.iter().zip(alive).filter(|(_, a)| **a) {
            for o in &e.objects {
                *refs.entry(o.clone()).or_default() += 1;
            }
        }
        refs
    }

    /// Usage by kind.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let mut row = |name: &'static str, items: Vec<u64>| {
            let bytes: u64 = items.iter().sum();
            t.rows.push((name, items.len() as u64, bytes));
            t.total += bytes;
        };
        let by = |f: &dyn Fn(&Object) -> bool| -> Vec<u64> {
            self.sizes
                .iter()
                .filter(|(o, _)| f(o))
                .map(|(_, n)| *n)
                .collect()
        };
        row(
            "layer blobs",
            by(&|o| matches!(o, Object::Blob(d) if self.layer_blobs.contains(d))),
        );
        row("snapshots", by(&|o| matches!(o, Object::Snapshot(_))));
        row("cache mounts", by(&|o| matches!(o, Object::CacheMount(_))));
        row(
            "other blobs",
            by(&|o| matches!(o, Object::Blob(d) if !self.layer_blobs.contains(d))),
        );
        row(
            "build records",
            self.entries
                .iter()
                .filter(|e| e.kind != EntryKind::CacheMount)
                .map(|e| e.record_bytes)
                .collect(),
        );
        row("temporary", self.tmp.iter().map(|(_, n)| *n).collect());
        // Cache-mount lock files are small; they count with the mounts.
        let locks: u64 = self
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::CacheMount)
            .map(|e| e.record_bytes)
            .sum();
        if let Some(r) = t.rows.iter_mut().find(|r| r.0 == "cache mounts") {
            r.2 += locks;
        }
        t.total += locks;
        t
    }

    /// What a prune with `opts` would remove, at time `now`.
    pub fn plan(&self, opts: &PruneOptions, now: SystemTime) -> Plan {
        let eligible = |e: &Entry| -> bool {
            if e.kind == EntryKind::SourceImage && !opts.all {
                return false;
            }
            match opts.until {
                Some(d) => now.duration_since(e.last_used).unwrap_or_default() >= d,
                None => true,
            }
        };
        let mut alive = vec![true; self.entries.len()];
        match opts.keep_storage {
            None => {
                for (i, e) in self.entries.iter().enumerate() {
                    alive[i] = !eligible(e);
                }
            }
            Some(keep) => {
                // Least recently used first, until what stays fits in `keep`.
                let mut order: Vec<usize> = (0..self.entries.len())
                    .filter(|&i| eligible(&self.entries[i]))
                    .collect();
                order.sort_by_key(|&i| (self.entries[i].last_used, i));
                for i in order {
                    if self.kept_bytes(&alive) <= keep {
                        break;
                    }
                    alive[i] = false;
                }
            }
        }
        let refs = self.refcounts(&alive);
        let mut plan = Plan::default();
        for (e, a) in self.entries.iter().zip(&alive) {
            if !a {
                plan.reclaimed += e.record_bytes;
                if e.kind == EntryKind::CacheMount {
                    plan.cache_mounts.push(e.id.clone());
                } else {
                    plan.records.push(e.id.clone());
                }
                plan.entries.push(e.clone());
            }
        }
        for (o, n) in &self.sizes {
            if refs.contains_key(o) {
                continue;
            }
            plan.reclaimed += n;
            match o {
                Object::Snapshot(id) => plan.snapshots.push(id.clone()),
                Object::Blob(d) => plan.blobs.push(d.clone()),
                Object::CacheMount(id) => {
                    if !plan.cache_mounts.contains(id) {
                        plan.cache_mounts.push(id.clone())
                    }
                }
            }
        }
        for (p, n) in &self.tmp {
            plan.tmp.push(p.clone());
            plan.reclaimed += n;
        }
        plan
    }

    /// Bytes that stay when only the `alive` entries are kept.
    fn kept_bytes(&self, alive: &[bool]) -> u64 {
        let refs = self.refcounts(alive);
        let objects: u64 = refs
            .keys()
            .map(|o| self.sizes.get(o).copied().unwrap_or(0))
            .sum();
        let records: u64 = self
            .entries
            .iter()
            .zip(alive)
            .filter(|(_, a)| **a)
            .map(|(e, _)| e.record_bytes)
            .sum();
        objects + records
    }
}

fn list(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        out.push(e.file_name().to_string_lossy().to_string());
    }
    out.sort();
    Ok(out)
}

/// Formats bytes as Docker does (go-units `HumanSize`: four significant digits,
/// decimal units).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", go_g4(v), UNITS[i])
}

/// Go's `%.4g` for the non-negative values `human_size` prints.
fn go_g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (4 - digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Parses a size as `docker buildx prune --keep-storage` does (go-units
/// `RAMInBytes`: binary multiples, `k`/`m`/`g`/`t`/`p` with optional `b` or `ib`).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let num_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(num_end);
    let unit = unit.trim_start();
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size: {s:?} (expected e.g. 512mb, 10gb)"))?;
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(format!("invalid size: {s:?} (unknown unit)")),
    };
    Ok((value * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Layer, Record};

    fn layer(n: &str) -> Layer {
        Layer {
            diff_id: format!("sha256:{n}"),
            digest: format!(
                "sha256:{}",
                n.repeat(64).chars().take(64).collect::<String>()
            ),
            size: 1,
            media_type: String::new(),
            snapshot: format!("snap-{n}"),
            pulled: false,
            source: None,
        }
    }

    #[test]
    fn sizes_print_and_parse_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(1234567), "1.235MB");
        assert_eq!(human_size(30_120_000), "30.12MB");
        assert_eq!(human_size(8192), "8.192kB");
        assert_eq!(parse_size("10gb"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5x").is_err());
    }

    #[test]
    fn prune_removes_entries_then_what_nothing_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (a, b, c) = (layer("a"), layer("b"), layer("c"));
        for l in [&a, &b, &c] {
            fs::create_dir(store.snapshot_path(&l.snapshot)).expect("mkdir");
            fs::write(store.blob_path(&l.digest).expect("path"), vec![7u8; 5000]).expect("blob");
        }
        let dangling = store.write_blob(b"orphan").expect("blob");
        let base = Record {
            layers: vec![a.clone()],
            produced: true,
            created: String::new(),
            kind: Kind::SourceImage,
            blobs: vec![],
            description: "docker.io/library/x".into(),
        };
        let step = |l: &Layer, d: &str| Record {
            layers: vec![a.clone(), l.clone()],
            produced: true,
            created: String::new(),
            kind: Kind::Regular,
            blobs: vec![],
            description: d.into(),
        };
        store.save_record("base", &base).expect("save");
        store
            .save_record("old", &step(&b, "RUN old"))
            .expect("save");
        store
            .save_record("new", &step(&c, "RUN new"))
            .expect("save");
        let old = store.cache_path("old");
        let f = fs::File::options().write(true).open(&old).expect("open");
        f.set_modified(SystemTime::now() - Duration::from_secs(7200))
            .expect("mtime");
        let measure = |ps: &[PathBuf]| -> Result<Vec<u64>> {
            Ok(ps.iter().map(|p| crate::tree::disk_usage(p)).collect())
        };
        let inv = Inventory::scan(&store, measure).expect("scan");
        assert_eq!(inv.entries.len(), 3);
        assert_eq!(inv.entries.last().map(|e| e.id.as_str()), Some("old"));
        let shared = inv.entries.iter().find(|e| e.id == "base").expect("base");
        assert!(shared.shared, "layer a is named by all three");
        // Each step's size is its own layer's (a 5000-byte blob, an empty snapshot
        // directory) though later steps name it too; the layer column is its blob's.
        let new = inv.entries.iter().find(|e| e.id == "new").expect("new");
        let blob = fs::symlink_metadata(store.blob_path(&c.digest).expect("p")).expect("m");
        assert!(new.size >= crate::tree::disk_bytes(&blob), "{}", new.size);
        assert_eq!(new.layer_bytes, c.size);
        assert!(!new.shared);

        let now = SystemTime::now();
        // until=1h: only the old step, its own layer, and the dangling blob.
        let p = inv.plan(
            &PruneOptions {
                until: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
            now,
        );
        assert_eq!(p.records, vec!["old"]);
        assert_eq!(p.snapshots, vec!["snap-b"]);
        let mut blobs = p.blobs.clone();
        blobs.sort();
        let mut want = vec![b.digest.clone(), dangling.clone()];
        want.sort();
        assert_eq!(blobs, want);
        // Default: every step, not the pulled image; layer a stays.
        let p = inv.plan(&PruneOptions::default(), now);
        assert_eq!(p.records.len(), 2);
        assert!(!p.snapshots.contains(&"snap-a".to_string()));
        // --all: everything.
        let p = inv.plan(
            &PruneOptions {
                all: true,
                ..Default::default()
            },
            now,
        );
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.snapshots.len(), 3);
        assert_eq!(p.reclaimed, inv.totals().total);
        // --keep-storage: the least recently used step goes first, and it suffices
        // (dangling objects go anyway).
        let named = inv.totals().total - inv.sizes[&Object::Blob(dangling.clone())];
        let p = inv.plan(
            &PruneOptions {
                all: true,
                keep_storage: Some(named - 1),
                ..Default::default()
            },
            now,
        );
        assert_eq!(p.records, vec!["old"]);
    }
}
