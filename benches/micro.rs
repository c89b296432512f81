//! Micro-benchmarks (criterion): Dockerfile parse throughput, build-context hashing
//! with a cold and a warm metadata cache, and layer production (walk, tar, sha256,
//! compress) in gzip and zstd next to `tar | pigz -p 2` and `tar | zstd -T2` on the
//! same files.
//!
//! `cargo bench --bench micro` (add `-- layer` etc. to pick a group). Data is generated
//! deterministically in `$TMPDIR`; compressed output goes to `/dev/shm` when it exists,
//! so that the layer figures are the CPU work, as for the pipelines they are compared
//! with. Under `cargo test` (criterion's test mode, one iteration each) the data is
//! smaller. The whole-build comparison with buildah is `benches/builds.py`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_frontend::dockerignore::Matcher;
use kiln_snapshotter::diff::{write_layer, LayerCompression};
use kiln_snapshotter::write_behind::Via;
use kiln_solver::cache::{hash_context, FileHashes};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Full-size data under `cargo bench`, small under `cargo test` (a debug build).
fn scale(full: usize, test: usize) -> usize {
    if cfg!(debug_assertions) {
        test
    } else {
        full
    }
}

/// xorshift64*: deterministic, fast, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Data that compresses as layers do (the same mix as `builds.py`'s `write_mixed`):
/// runs of random bytes, of words, and of sparse 16-byte records.
fn mixed(size: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let words: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            (0..2 + r.below(8))
                .map(|_| b'a' + r.below(26) as u8)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let n = (4096 + r.below(61440)).min(size - out.len());
        let kind = r.below(100);
        let start = out.len();
        if kind < 35 {
            out.extend((0..n).map(|_| r.next() as u8));
        } else if kind < 75 {
            while out.len() - start < n {
                // Zipf-like: small word indexes are the common ones.
                let w = &words[(r.below(4096) * r.below(4096)) / 4096];
                out.extend_from_slice(w);
                out.push(if r.below(10) == 0 { b'\n' } else { b' ' });
            }
            out.truncate(start + n);
        } else {
            out.resize(start + n, 0);
            for i in (0..n).step_by(16) {
                let v = (r.next() as u32 & 0xF_FFFF).to_le_bytes();
                let end = (i + 4).min(n);
                out[start + i..start + end].copy_from_slice(&v[..end - i]);
            }
        }
    }
    out
}

/// `files` files, 100 to a directory, `total` bytes in all, sizes spread as in source
/// trees (many small, a few large), cut from one pool of mixed data.
fn make_tree(dir: &Path, files: usize, total: usize) -> usize {
    let pool = mixed(8 << 20, 11);
    let mut r = Rng(7);
    // Pareto(1.5)-like weights.
    let weights: Vec<f64> = (0..files)
        .map(|_| {
            let u = (r.below(1_000_000) as f64 + 1.0) / 1_000_001.0;
            u.powf(-1.0 / 1.5)
        })
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut written = 0;
    for (i, w) in weights.iter().enumerate() {
        let d = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&d).expect("creating a bench directory");
        }
        let n = ((w / sum * total as f64) as usize).clamp(1, pool.len() - 1);
        let off = r.below(pool.len() - n);
        fs::write(d.join(format!("f{:02}.dat", i % 100)), &pool[off..off + n])
            .expect("writing a bench file");
        written += n;
    }
    written
}

/// A fresh directory for one benchmark's data.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("kiln-bench-{name}-"))
        .tempdir()
        .expect("creating a bench directory")
}

/// Where compressed output goes: memory when possible, so disks are not measured.
fn sink_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new().prefix("kiln-bench-out-").clone();
    if shm.is_dir() {
        if let Ok(d) = b.tempdir_in(shm) {
            return d;
        }
    }
    b.tempdir().expect("creating an output directory")
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A Dockerfile of `stages` stages in the style of real ones: ARG/ENV expansion, RUN
/// with continuation lines and mounts, COPY with flags, heredocs, JSON forms.
fn dockerfile(stages: usize) -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm-slim\n");
    for i in 0..stages {
        s += &format!(
            r#"FROM ${{BASE}} AS stage{i}
ARG VERSION=1.{i}.0
ENV APP_HOME=/opt/app{i} \
    PATH=/opt/app{i}/bin:$PATH
WORKDIR $APP_HOME
COPY --chown=1000:1000 --chmod=0644 src/{i}/ ./src/
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    apt-get update && \
    apt-get install -y --no-install-recommends ca-certificates curl && \
    rm -rf /var/lib/apt/lists/*
RUN <<EOF
set -e
echo "building ${{VERSION}}" > /build-{i}.txt
make -j2 all
EOF
COPY --from=stage{prev} /build-{prev}.txt /opt/
EXPOSE 80{i}/tcp
HEALTHCHECK --interval=30s --timeout=3s CMD ["curl", "-f", "http://localhost/"]
LABEL org.opencontainers.image.version="${{VERSION}}" stage="{i}"
USER 1000:1000
CMD ["/opt/app{i}/bin/run", "--port", "80{i}"]
"#,
            prev = i.saturating_sub(1)
        );
    }
    s
}

fn parse(c: &mut Criterion) {
    let text = dockerfile(scale(200, 20));
    let lines = text.lines().count();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function(
        BenchmarkId::new("dockerfile", format!("{lines} lines")),
        |b| {
            b.iter(|| {
                kiln_frontend::parser::parse(&text, "Dockerfile")
                    .expect("the bench Dockerfile parses")
            })
        },
    );
    g.finish();
}

fn context_hash(c: &mut Criterion) {
    let files = scale(20_000, 500);
    let dir = scratch("context");
    let ctx = dir.path().join("ctx");
    let bytes = make_tree(&ctx, files, scale(200 << 20, 4 << 20));
    let store = kiln_snapshotter::Store::open(dir.path().join("store")).expect("opening a store");
    let srcs = vec![".".to_string()];
    let ignore = Matcher::default();
    // Digests are only remembered for files whose last change is 2 s old.
    std::thread::sleep(kiln_solver::cache::SETTLED + Duration::from_millis(200));
    let first = FileHashes::load(&store, &ctx);
    let want = hash_context(&ctx, &srcs, &ignore, &first).expect("hashing the context");
    first.save(&store).expect("saving the context's digests");

    let mut g = c.benchmark_group("context-hash");
    g.sample_size(10);
    for (unit, tp) in [
        ("files", Throughput::Elements(files as u64)),
        ("bytes", Throughput::Bytes(bytes as u64)),
    ] {
        g.throughput(tp);
        // Cold: nothing remembered, every file is read and hashed (from the page cache).
        g.bench_function(BenchmarkId::new("cold", unit), |b| {
            b.iter(|| {
                let got = hash_context(&ctx, &srcs, &ignore, &FileHashes::default())
                    .expect("hashing the context");
                assert_eq!(got, want);
            })
        });
        // Warm: the digests of the last build are loaded and every file is only stat'ed,
        // as in a rebuild.
        g.bench_function(BenchmarkId::new("warm", unit), |b| {
            b.iter(|| {
                let known = FileHashes::load(&store, &ctx);
                let got = hash_context(&ctx, &srcs, &ignore, &known).expect("hashing the context");
                assert_eq!(got, want);
            })
        });
    }
    g.finish();
}

fn layer(c: &mut Criterion) {
    let dir = scratch("layer");
    let tree: PathBuf = dir.path().join("tree");
    let bytes = make_tree(&tree, scale(2_000, 100), scale(256 << 20, 4 << 20));
    let out = sink_dir();
    let mut g = c.benchmark_group("layer");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(bytes as u64));
    for (name, compression, tool) in [
        ("gzip", LayerCompression::Gzip, "pigz -p 2"),
        ("zstd", LayerCompression::Zstd, "zstd -q -T2"),
    ] {
        let blob = out.path().join(format!("kiln.{name}"));
        g.bench_function(BenchmarkId::new("kiln", name), |b| {
            b.iter(|| {
                let f = fs::File::create(&blob).expect("creating the layer file");
                write_layer(&tree, f, compression, Via::PageCache).expect("writing the layer")
            })
        });
        let bin = tool.split(' ').next().unwrap_or(tool);
        if !has(bin) {
            eprintln!(
                "layer/{name}: {bin} is not installed, no reference (scripts/setup.sh installs it)"
            );
            continue;
        }
        let script = format!(
            "tar -C '{}' -cf - . | {tool} > '{}'",
            tree.display(),
            out.path().join(format!("ref.{name}")).display()
        );
        g.bench_function(BenchmarkId::new(format!("tar | {tool}"), name), |b| {
            b.iter(|| {
                let st = Command::new("sh")
                    .arg("-c")
                    .arg(&script)
                    .status()
                    .expect("running sh");
                assert!(st.success(), "{script} failed");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse, context_hash, layer);
criterion_main!(benches);
