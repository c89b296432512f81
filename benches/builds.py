#!/usr/bin/env python3
"""Whole-build comparison of kiln with BuildKit and buildah, side by side in one run.

    sudo python3 benches/builds.py [--rounds 3] [--cases parallel-stages,...] [--scale 1]

Run as root on a machine prepared by scripts/setup.sh (the local registry on
127.0.0.1:5000 with its seeded base images, the unprivileged test user with a
subordinate id range, buildah, pigz, zstd and GNU time). As root it builds kiln in release mode,
starts ../shared/buildkit's buildkitd (rootful, overlayfs, as in CI) for the run and
hands the test user its socket, then runs every case as the test user (kiln-ci;
KILN_TEST_USER), kiln and buildah rootless. Run as any other user it runs as that user
with $KILN (default target/release/kiln), and with BuildKit only given --buildkit-addr.
It installs nothing: without buildah or BuildKit it measures what it has and says so.

BuildKit is driven by buildctl with its dockerfile.v0 frontend; its CPU seconds are
buildctl's plus the daemon's (user+sys of buildkitd and the runc and RUN processes it
reaped, from /proc/PID/stat), next to kiln's whole process tree (GNU time). "Cold"
cases start each round from an empty kiln store and `buildctl prune --all`. The cases
only BuildKit is compared on (context-cold, seed-*, large-base-cold, push-1gib) write
`type=oci,dest=FILE` with both. For seed-multiplatform the root part registers
Debian's qemu-aarch64 with the host's binfmt_misc for the run (BuildKit needs it; kiln
registers QEMU in its own user namespace).

buildah (Debian 12: 1.28) runs as unprivileged CI runs it: BUILDAH_ISOLATION=chroot,
`cgroups = "disabled"` in its containers.conf, the overlay storage driver in a private
--root, the local registry marked insecure in its registries.conf, `--layers` so that it
caches steps as docker does, and its other defaults (one job at a time).

The registry-cache cases (cache-fresh-runner, cache-one-change) compare with BuildKit's
own registry cache, emptying its cache with `buildctl prune --all` before each round, as
a fresh CI runner starts.

Each case runs the builders alternately, --rounds times, and reports the median wall
time, the median CPU seconds, the peak RSS (the largest process of each run's tree,
from GNU time) and the ratios, next to the case's targets (issue 7's against buildah,
issue 25's against BuildKit). The table and the machine description go to
benches/RESULTS.md (--out). Contexts are generated deterministically. --scale shrinks
the data (contexts, the big layer, the CPU jobs) for a quick check of the harness
itself; figures from a scaled run are not the targets' figures.
"""

import argparse
import os
import platform
import pwd
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REGISTRY = "127.0.0.1:5000"
BUSYBOX = f"{REGISTRY}/library/busybox:latest"
DEBIAN = f"{REGISTRY}/library/debian:bookworm-slim"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CASES = [
    "parallel-stages",
    "noop-rebuild",
    "one-file-change",
    "context-cold",
    "seed-cold",
    "seed-warm",
    "seed-multiplatform",
    "large-base-cold",
    "big-layer-gzip",
    "big-layer-zstd",
    "push-1gib",
    "push-unchanged",
    "cold-build",
    "cache-fresh-runner",
    "single-id",
]
MIB = 1 << 20


class Failed(Exception):
    pass


class Run:
    """One timed command: wall seconds, peak RSS (KiB), CPU seconds, output."""

    def __init__(self, wall, rss_kib, cpu, out):
        self.wall, self.rss_kib, self.cpu, self.out = wall, rss_kib, cpu, out


def run(cmd, cwd=None, env=None, shell=False, check=True):
    """Runs cmd under GNU time for its peak RSS and CPU time. (wait4 from here would
    not do: a child keeps the peak RSS of the process it was forked from, this one.)"""
    if shell:
        cmd = ["sh", "-c", cmd]
    fd, stats = tempfile.mkstemp(prefix="time-")
    os.close(fd)
    start = time.monotonic()
    p = subprocess.run(
        ["/usr/bin/time", "-o", stats, "-f", "%M %U %S", "--"] + list(cmd),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wall = time.monotonic() - start
    out = p.stdout.decode(errors="replace")
    with open(stats) as f:
        last = (f.read().strip().splitlines() or ["0 0 0"])[-1].split()
    os.remove(stats)
    if check and p.returncode != 0:
        tail = "\n".join(out.splitlines()[-25:])
        raise Failed(f"`{' '.join(cmd)}` exited with {p.returncode}:\n{tail}")
    try:
        rss, cpu = int(last[0]), float(last[1]) + float(last[2])
    except (ValueError, IndexError):
        rss, cpu = 0, 0.0
    return Run(wall, rss, cpu, out)


def runs(cmds, **kw):
    """Several commands as one measurement: summed time, the largest RSS."""
    parts = [run(c, **kw) for c in cmds]
    return Run(
        sum(r.wall for r in parts),
        max(r.rss_kib for r in parts),
        sum(r.cpu for r in parts),
        "".join(r.out for r in parts),
    )


class Kiln:
    name = "kiln"

    def __init__(self, exe, work):
        self.exe, self.root = exe, os.path.join(work, "kiln-store")
        self.env = dict(os.environ)

    def build(self, ctx, *args, root=None):
        cmd = [self.exe, "build", "--root", root or self.root, "--progress", "plain"]
        return run(cmd + list(args) + [ctx], env=self.env)

    def wipe(self, root=None):
        root = root or self.root
        if os.path.isdir(root):
            run([self.exe, "prune", "--all", "--force", "--root", root], env=self.env)
            shutil.rmtree(root, ignore_errors=True)


class Buildah:
    name = "buildah"

    def __init__(self, exe, work):
        self.exe, self.work = exe, work
        conf = os.path.join(work, "buildah-conf")
        os.makedirs(conf, exist_ok=True)
        with open(os.path.join(conf, "containers.conf"), "w") as f:
            f.write('[containers]\ncgroups = "disabled"\n')
        with open(os.path.join(conf, "registries.conf"), "w") as f:
            f.write(f'[[registry]]\nlocation = "{REGISTRY}"\ninsecure = true\n')
        self.env = dict(os.environ)
        self.env.update(
            BUILDAH_ISOLATION="chroot",
            CONTAINERS_CONF=os.path.join(conf, "containers.conf"),
            CONTAINERS_REGISTRIES_CONF=os.path.join(conf, "registries.conf"),
        )
        self.root = os.path.join(work, "buildah-store")

    def cmd(self, root, *args):
        root = root or self.root
        return [
            self.exe,
            "--storage-driver",
            "overlay",
            "--root",
            root,
            "--runroot",
            root + "-run",
        ] + list(args)

    def build(self, ctx, *args, root=None):
        cmd = self.cmd(root, "build", "--layers", *args, ctx)
        try:
            return run(cmd, env=self.env)
        except Failed as e:
            # buildah 1.28's chroot isolation now and then fails a RUN with "Close_Fd
            # sealing memfd copy: Device or resource busy"; one more try, said aloud.
            print(f"[bench] buildah failed, trying once more: {str(e).splitlines()[-1]}", flush=True)
            return run(cmd, env=self.env)

    def push(self, image, dest, *args, root=None):
        return run(self.cmd(root, "push", *args, image, dest), env=self.env)

    def wipe(self, root=None):
        root = root or self.root
        # The store holds files of the subordinate ids: remove it from inside the
        # user namespace.
        for d in (root, root + "-run"):
            if os.path.isdir(d):
                run([self.exe, "unshare", "rm", "-rf", d], env=self.env, check=False)
                shutil.rmtree(d, ignore_errors=True)


def proc_cpu(pid):
    """User+sys seconds of process `pid` and the children it reaped (0 without one)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime stime cutime cstime: fields 14-17 of stat(5), 12-15 after ")".
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def registry_pid():
    """The pid of the registry scripts/setup.sh started, or None."""
    state = os.environ.get("KILN_CI_STATE", "/var/tmp/kiln-ci")
    try:
        with open(os.path.join(state, "registry", "pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            return pid if "registry" in f.read() else None
    except (OSError, ValueError):
        return None


class BuildKit:
    """BuildKit's own buildkitd (rootful, from ../shared/buildkit, started by the root
    part of this script) driven with buildctl and its dockerfile.v0 frontend. Its CPU
    time is the client's and the daemon's (user+sys of buildkitd and the runc and RUN
    processes it reaped, from /proc/PID/stat), so that it compares with kiln's whole
    process tree."""

    name = "buildkit"

    def __init__(self, buildctl, addr, pid=None):
        self.exe, self.addr, self.pid = buildctl, addr, pid

    def daemon_cpu(self):
        return proc_cpu(self.pid)

    def timed(self, cmd):
        before = self.daemon_cpu()
        r = run(cmd)
        r.cpu += self.daemon_cpu() - before
        return r

    def prune(self):
        """Empties the daemon's cache, as a fresh CI runner starts."""
        return run([self.exe, "--addr", self.addr, "prune", "--all"])

    def wipe(self, root=None):
        self.prune()

    def buildctl(self, ctx, *args):
        cmd = [self.exe, "--addr", self.addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0",
               "--local", f"context={ctx}", "--local", f"dockerfile={ctx}"]
        return self.timed(cmd + list(args))

    def build(self, ctx, *args, root=None):
        """kiln's flags as buildctl's: --no-cache, --output/-o (a registry output
        insecure, for the local registry), --push with -t, --platform."""
        out, tags, push, i = [], [], False, 0
        args = list(args)
        while i < len(args):
            a = args[i]
            if a == "--no-cache":
                out.append(a)
            elif a in ("--output", "-o"):
                spec = args[i + 1]
                if spec.startswith("type=registry"):
                    # buildx's alias: buildctl knows the image exporter.
                    spec = "type=image" + spec[len("type=registry"):] + ",push=true"
                if "push=true" in spec:
                    spec += ",registry.insecure=true"
                out += ["--output", spec]
                i += 1
            elif a == "-t":
                tags.append(args[i + 1])
                i += 1
            elif a == "--push":
                push = True
            elif a == "--platform":
                out += ["--opt", "platform=" + args[i + 1]]
                i += 1
            elif a == "--build-arg":
                out += ["--opt", "build-arg:" + args[i + 1]]
                i += 1
            else:
                raise Failed(f"BuildKit peer: no translation of {a!r}")
            i += 1
        if push:
            out += ["--output", f"type=image,name={','.join(tags)},push=true,registry.insecure=true"]
        return self.buildctl(ctx, *out)

    def cache_bytes(self):
        """The daemon's cache on disk (`buildctl du`'s total)."""
        r = run([self.exe, "--addr", self.addr, "du"], check=False)
        for line in r.out.splitlines():
            if line.startswith("Total:"):
                return parse_size(line.split(":", 1)[1].strip())
        return None


def parse_size(text):
    """`12.5MB`, `1.2GB`, `512B` (buildctl du's units, powers of 1000) as bytes."""
    import re
    m = re.match(r"([0-9.]+)\s*([kKMGT]?i?B)", text)
    if not m:
        return None
    units = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
             "KiB": 1024, "MiB": MIB, "GiB": 1 << 30}
    return int(float(m.group(1)) * units.get(m.group(2), 1))


def median(xs):
    return statistics.median(xs) if xs else None


def wall(got, builder):
    """The median wall time of `builder`'s rounds (None when it did not run)."""
    return median([r.wall for r in got.get(builder, [])])


def write_mixed(path, size, seed):
    """Deterministic data that compresses like real layers do: runs of random bytes
    (compressed files), of words (text, scripts) and of sparse structured records
    (binaries, tables)."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(4096)]
    written = 0
    with open(path, "wb") as f:
        while written < size:
            kind = rnd.random()
            n = min(size - written, rnd.randint(4096, 65536))
            if kind < 0.35:
                chunk = rnd.randbytes(n)
            elif kind < 0.75:
                parts, m = [], 0
                while m < n:
                    w = words[int(rnd.paretovariate(1.2)) % len(words)]
                    parts.append(w)
                    parts.append(b"\n" if rnd.random() < 0.1 else b" ")
                    m += len(w) + 1
                chunk = b"".join(parts)[:n]
            else:
                rec = bytearray(n)
                for i in range(0, n, 16):
                    rec[i : i + 4] = rnd.randrange(1 << 20).to_bytes(4, "little")
                chunk = bytes(rec)
            f.write(chunk)
            written += len(chunk)


def make_tree_context(ctx, files, total):
    """`files` files of `total` bytes in all, 100 to a directory, sizes spread as in
    source trees (many small, a few large)."""
    if os.path.exists(os.path.join(ctx, ".complete")):
        return
    shutil.rmtree(ctx, ignore_errors=True)
    os.makedirs(ctx)
    rnd = random.Random(7)
    weights = [rnd.paretovariate(1.5) for _ in range(files)]
    scale = total / sum(weights)
    pool = os.path.join(ctx, "..", "pool.bin")
    write_mixed(pool, 8 * MIB, 11)
    with open(pool, "rb") as f:
        data = f.read()
    os.remove(pool)
    for i, w in enumerate(weights):
        d = os.path.join(ctx, f"d{i // 100:03}")
        if i % 100 == 0:
            os.makedirs(d)
        n = max(1, min(int(w * scale), len(data) - 1))
        off = rnd.randrange(len(data) - n + 1)
        with open(os.path.join(d, f"f{i % 100:02}.dat"), "wb") as f:
            f.write(data[off : off + n])
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(f"FROM {BUSYBOX}\nCOPY . /src\nRUN du -s /src > /src-size\n")
    with open(os.path.join(ctx, ".complete"), "w") as f:
        f.write("")


def top_layer_size(oci_tar):
    """The size of the last layer of the (only) image in an OCI archive."""
    import json
    import tarfile
    with tarfile.open(oci_tar) as t:
        def blob(d):
            return json.load(t.extractfile("blobs/sha256/" + d.split(":", 1)[1]))
        desc = json.load(t.extractfile("index.json"))["manifests"][0]
        m = blob(desc["digest"])
        if "manifests" in m:
            m = blob(m["manifests"][0]["digest"])
        return m["layers"][-1]["size"]


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // (1 << 20)
    try:
        with open("/etc/debian_version") as f:
            debian = "Debian " + f.read().strip()
    except OSError:
        debian = platform.platform()
    return f"{cpu}, {os.cpu_count()} cores, {mem} GiB, Linux {platform.release()}, {debian}"


def fs_type(path):
    return run(["stat", "-f", "-c", "%T", path], check=False).out.strip()


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        os.makedirs(self.work, exist_ok=True)
        self.kiln = Kiln(args.kiln, self.work)
        exe = shutil.which("buildah")
        self.buildah = Buildah(exe, self.work) if exe and not args.kiln_only else None
        self.builders = [b for b in (self.kiln, self.buildah) if b]
        self.buildkit = (BuildKit(args.buildctl, args.buildkit_addr, args.buildkit_pid)
                         if args.buildkit_addr else None)
        if self.buildkit and not args.kiln_only:
            self.builders.append(self.buildkit)
        self.rows = []
        self.notes = []

    # -- helpers ------------------------------------------------------------------

    def rounds(self, one, prepare=None, who=None):
        """Alternates the builders (`who`, default all) for --rounds rounds;
        one(builder) -> Run."""
        who = who or self.builders
        got = {b.name: [] for b in who}
        for i in range(self.args.rounds):
            for b in who if i % 2 == 0 else list(reversed(who)):
                if prepare:
                    prepare(b, i)
                r = one(b)
                got[b.name].append(r)
                print(f"    {b.name:8} round {i + 1}: {r.wall:7.2f} s  {r.rss_kib / 1024:6.1f} MiB", flush=True)
        return got

    def row(self, case, got, target, met, reference="", bk_limit=0.6, bk_cpu_limit=None):
        """A table row. With BuildKit in the run, kiln's wall time must be at most
        `bk_limit` of BuildKit's (None: compared, no target) and its CPU seconds at
        most `bk_cpu_limit` of BuildKit's."""
        k = got["kiln"]
        b = got.get("buildah", [])
        kw, bw, kw_bk = wall(got, "kiln"), wall(got, "buildah"), wall(got, "buildkit")
        kcpu = median([r.cpu for r in k])
        bkcpu = median([r.cpu for r in got.get("buildkit", [])])
        if kw_bk:
            if bk_limit is not None:
                target += f"; ≤ {bk_limit} × BuildKit"
                met = (met is not False) and kw <= bk_limit * kw_bk
            if bk_cpu_limit is not None:
                target += f"; CPU ≤ {bk_cpu_limit} × BuildKit's"
                met = (met is not False) and kcpu <= bk_cpu_limit * bkcpu
        self.rows.append(
            dict(
                case=case,
                kiln=kw,
                buildah=bw,
                ratio=(kw / bw) if bw else None,
                buildkit=kw_bk,
                bk_ratio=(kw / kw_bk) if kw_bk else None,
                kiln_cpu=kcpu,
                buildkit_cpu=bkcpu,
                kiln_rss=max(r.rss_kib for r in k) / 1024,
                buildah_rss=(max(r.rss_kib for r in b) / 1024) if b else None,
                reference=reference,
                target=target,
                met=met,
            )
        )

    def ctx(self, name, dockerfile):
        d = os.path.join(self.work, "ctx", name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "Dockerfile"), "w") as f:
            f.write(dockerfile)
        return d

    def ratio_ok(self, got, limit):
        if "buildah" not in got:
            return None
        return wall(got, "kiln") <= limit * wall(got, "buildah")

    def rss_ok(self, got):
        return max(r.rss_kib for r in got["kiln"]) < 150 * 1024

    # -- cases --------------------------------------------------------------------

    def parallel_stages(self):
        # Calibrate the job: busybox awk (the base image's) on the host, ~2 s of one core.
        job = "awk 'BEGIN{for(i=0;i<%d;i++)s+=i*%d; print s}'"
        n = 200000
        while True:
            r = run(["busybox", "sh", "-c", job % (n, 1)])
            if r.cpu > 0.3:
                break
            n *= 4
        n = int(n * 2.0 * self.args.scale / r.cpu)
        df = ""
        for k in (1, 2, 3, 4):
            df += f"FROM {BUSYBOX} AS s{k}\nRUN {job % (n, k)} > /out\n"
        df += f"FROM {BUSYBOX}\n" + "".join(f"COPY --from=s{k} /out /s{k}\n" for k in (1, 2, 3, 4))
        ctx = self.ctx("parallel", df)
        for b in self.builders:  # pull the base image outside the measurement
            b.build(ctx)
        # The CPU work is measured right before each kiln round (the 4 jobs one after
        # the other): this machine's CPU speed drifts by 20% over minutes, so a
        # single measurement up front compares kiln with another machine.
        works = []

        def measure(b, _i):
            if b is self.kiln:
                works.append(sum(run(["busybox", "sh", "-c", job % (n, k)]).cpu for k in (1, 2, 3, 4)))

        got = self.rounds(lambda b: b.build(ctx, "--no-cache"), prepare=measure)
        ratios = [r.wall / (w / 2) for r, w in zip(got["kiln"], works)]
        ratio, work = median(ratios), median(works)
        ok = ratio <= 1.15 and self.ratio_ok(got, 0.6) is not False and self.rss_ok(got)
        self.row(
            "parallel-stages",
            got,
            "≤ 1.15 × CPU work / 2 cores; ≤ 0.6 × buildah",
            ok,
            bk_limit=None,
            reference=
            f"CPU work {min(works):.2f}–{max(works):.2f} s (4 jobs, measured before each kiln round; median"
            f" {work:.2f} s), / 2 cores = {work / 2:.2f} s; kiln's wall time over its round's CPU work / 2:"
            f" median {ratio:.2f}× ({', '.join(f'{x:.2f}' for x in ratios)})",
        )

    def tree(self):
        files = max(100, int(20000 * self.args.scale))
        ctx = os.path.join(self.work, "ctx", f"tree-{files}")
        make_tree_context(ctx, files, int(200 * MIB * self.args.scale))
        return ctx

    def find_time(self, ctx):
        t = [run(["find", ctx, "-printf", "%s %T@ %p\\n"]).wall for _ in range(5)]
        return median(t)

    def classic(self):
        """kiln and buildah, for the targets against buildah (issue 7)."""
        return [b for b in (self.kiln, self.buildah) if b]

    def noop_rebuild(self):
        ctx = self.tree()
        for b in self.builders:
            b.build(ctx)
        got = self.rounds(lambda b: b.build(ctx), who=self.classic())
        f = self.find_time(ctx)
        kw = wall(got, "kiln")
        ok = kw <= 3 * f and self.ratio_ok(got, 0.1) is not False and self.rss_ok(got)
        self.row(
            "noop-rebuild",
            got,
            "≤ 0.1 × buildah; ≤ 3 × find",
            ok,
            f"`find` stats the context in {f:.3f} s; kiln {kw / f:.1f}×",
        )
        if self.buildkit:
            # Against BuildKit, both writing an OCI archive.
            got = self.rounds(lambda b: b.build(ctx, "--output", f"type=oci,dest={self.oci_out(b)}"),
                              who=self.versus())
            self.row("noop-rebuild-oci", got, "(compared)", self.rss_ok(got), "both write type=oci,dest=FILE")

    def one_file_change(self):
        ctx = self.tree()
        target = os.path.join(ctx, "d000", "f00.dat")
        counter = [0]

        def change(_b, _i):
            counter[0] += 1
            with open(target, "a") as f:
                f.write(f"change {counter[0]}\n")

        for b in self.builders:
            b.build(ctx)
        got = self.rounds(lambda b: b.build(ctx), prepare=change, who=self.classic())
        for r in got["kiln"]:
            # Only the COPY and the RUN after it may run again.
            if r.out.count("CACHED") < 1:
                raise Failed("one-file-change: kiln reused nothing:\n" + r.out[-2000:])
        ok = self.ratio_ok(got, 0.5) is not False and self.rss_ok(got)
        self.row("one-file-change", got, "≤ 0.5 × buildah", ok)
        if self.buildkit:
            got = self.rounds(lambda b: b.build(ctx, "--output", f"type=oci,dest={self.oci_out(b)}"),
                              prepare=change, who=self.versus())
            self.row("one-file-change-oci", got, "(compared)", self.rss_ok(got),
                     "both write type=oci,dest=FILE", bk_limit=0.5)

    def big_layer(self, compression):
        size = int(1024 * MIB * self.args.scale)
        seed_size = max(MIB, size // 16)
        ctx = os.path.join(self.work, "ctx", "big")
        os.makedirs(ctx, exist_ok=True)
        seed = os.path.join(ctx, "seed.bin")
        if not os.path.exists(seed) or os.path.getsize(seed) != seed_size:
            write_mixed(seed, seed_size, 3)
        gen = "mkdir -p {d} && for i in $(seq 16); do cat {s} > {d}/part$i; done"
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(
                f"FROM {BUSYBOX}\n"
                "RUN --mount=type=bind,source=seed.bin,target=/seed.bin "
                + gen.format(d="/data", s="/seed.bin")
                + "\n"
            )
        out = os.path.join(self.work, "out")
        os.makedirs(out, exist_ok=True)
        dest = os.path.join(out, "image.tar")

        sizes = {b.name: [] for b in self.builders}

        def one(b):
            if os.path.exists(dest):
                os.remove(dest)
            if b is not self.buildah:
                spec = f"type=oci,dest={dest}" + (",compression=zstd" if compression == "zstd" else "")
                r = b.build(ctx, "--no-cache", "--output", spec)
            else:
                extra = ["--compression-format", "zstd"] if compression == "zstd" else []
                built = b.build(ctx, "--no-cache", "-t", "bench-big")
                pushed = b.push("bench-big", f"oci-archive:{dest}", *extra)
                r = Run(built.wall + pushed.wall, max(built.rss_kib, pushed.rss_kib), built.cpu + pushed.cpu,
                        built.out + pushed.out)
            sizes[b.name].append(top_layer_size(dest))
            return r

        for b in self.builders:
            b.build(ctx, *(["-t", "bench-big"] if b is self.buildah else []))
        try:
            # Each round from written-out caches, as the reference below: otherwise a
            # round pays for the writeback of the previous one's 1.5 GB.
            got = self.rounds(one, prepare=lambda _b, _i: run(["sync"]))
        finally:
            # Each round leaves a 1 GiB snapshot and its blob in both stores (about 20
            # GB a case): gone before the next case, which would otherwise fill the disk.
            for b in self.builders:
                b.wipe()
        # The same work by hand: make the data, then tar and compress it.
        data = os.path.join(self.work, "ref-data")
        tool = "pigz -p 2" if compression == "gzip" else "zstd -q -T2"
        refs = []
        for _ in range(3):
            shutil.rmtree(data, ignore_errors=True)
            run(["sync"])
            g = run(gen.format(d=data, s=seed), shell=True)
            c = run(f"tar -C {data} -cf - . | {tool} > {out}/ref.blob", shell=True)
            # Not the target, for context: kiln also makes what it wrote durable (the
            # step's files, the layer blob in its store, the archive), which `sync`
            # measures for the data and the blob here.
            d = run(["sync"])
            refs.append((g.wall, c.wall, d.wall))
        shutil.rmtree(data, ignore_errors=True)
        g, c, d = (median([x[i] for x in refs]) for i in range(3))
        kw = wall(got, "kiln")
        ok = kw <= 1.2 * (g + c) and self.rss_ok(got)
        ref = (f"{size / MIB:.0f} MiB: making it {g:.2f} s + `tar | {tool}` {c:.2f} s = {g + c:.2f} s;"
               f" kiln {kw / (g + c):.2f}× (then `sync` of the data and the blob: {d:.2f} s more);"
               " the layer compressed: " + ", ".join(f"{n} {median(v) / MIB:.1f} MiB" for n, v in sizes.items() if v))
        target = f"≤ 1.2 × (make the data + `tar | {tool}`)"
        if sizes.get("buildkit") and compression == "gzip":
            # As small as BuildKit's, within 2%.
            target += "; size within 2% of BuildKit's"
            ok = ok and median(sizes["kiln"]) <= 1.02 * median(sizes["buildkit"])
        self.row(f"big-layer-{compression}", got, target, ok, ref,
                 bk_cpu_limit=0.6 if compression == "gzip" else None)

    def push_unchanged(self):
        ctx = self.ctx("push", f"FROM {BUSYBOX}\nRUN echo pushed > /hello\n")

        def one(b):
            if b is not self.buildah:
                return b.build(ctx, "--output", f"type=registry,name={REGISTRY}/bench/{b.name}-push:latest")
            built = b.build(ctx, "-t", f"{REGISTRY}/bench/buildah-push:latest")
            pushed = b.push(f"{REGISTRY}/bench/buildah-push:latest", f"docker://{REGISTRY}/bench/buildah-push:latest")
            return Run(built.wall + pushed.wall, max(built.rss_kib, pushed.rss_kib), built.cpu + pushed.cpu, built.out + pushed.out)

        for b in self.builders:
            one(b)
        got = self.rounds(one)
        uploads = sum(r.out.count(": Pushed") for r in got["kiln"])
        kw = wall(got, "kiln")
        ok = uploads == 0 and kw < 0.3 and self.rss_ok(got)
        self.row(
            "push-unchanged",
            got,
            "no blob upload; < 0.3 s",
            ok,
            f"kiln uploaded {uploads} blobs in {len(got['kiln'])} pushes (cached build + push)",
        )

    def cache_fresh_runner(self):
        """A CI runner that starts empty: a 200 MB image built and pushed once with a
        registry cache export (mode=max), then, from an empty cache each round (a fresh
        kiln store; `buildctl prune --all` for BuildKit), the fully cached build and
        push with the registry cache imported, and the same with one source file
        changed. The peer is BuildKit's buildkitd with its own registry cache
        (--export-cache / --import-cache type=registry), when the root part of this
        script could start it."""
        size = int(200 * MIB * self.args.scale)
        ctx = os.path.join(self.work, "ctx", "cache-runner")
        os.makedirs(os.path.join(ctx, "data"), exist_ok=True)
        for i in range(4):
            p = os.path.join(ctx, "data", f"part{i}.bin")
            if not os.path.exists(p) or os.path.getsize(p) != size // 4:
                write_mixed(p, size // 4, 40 + i)
        src = os.path.join(ctx, "src.txt")

        def version(change):
            with open(src, "w") as f:
                f.write("version 2\n" if change else "version 1\n")

        version(False)
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(f"FROM {BUSYBOX}\nCOPY data /data\nCOPY src.txt /src.txt\nRUN wc -c /src.txt > /built\n")
        k, bk = self.kiln, self.buildkit
        cache = {"kiln": f"{REGISTRY}/bench/kiln-cache:runner", "buildkit": f"{REGISTRY}/bench/bk-cache:runner"}
        app = {"kiln": f"{REGISTRY}/bench/kiln-app", "buildkit": f"{REGISTRY}/bench/bk-app"}
        seed_root = os.path.join(self.work, "cache-seed")
        k.wipe(seed_root)
        k.build(ctx, "--cache-to", f"type=registry,ref={cache['kiln']},mode=max", "--push", "-t",
                f"{app['kiln']}:seed", root=seed_root)
        k.wipe(seed_root)
        fresh = os.path.join(self.work, "cache-fresh")
        if bk:
            bk.prune()
            bk.buildctl(ctx, "--export-cache", f"type=registry,ref={cache['buildkit']},mode=max",
                     "--output", f"type=image,name={app['buildkit']}:seed,push=true,registry.insecure=true")

        def one(who, change):
            version(change)
            if who == "kiln":
                k.wipe(fresh)
                return k.build(ctx, "--cache-from", f"type=registry,ref={cache['kiln']}", "--push", "-t",
                               f"{app['kiln']}:runner", root=fresh)
            bk.prune()
            return bk.buildctl(ctx, "--import-cache", f"type=registry,ref={cache['buildkit']}",
                            "--output", f"type=image,name={app['buildkit']}:runner,push=true,registry.insecure=true")

        who = ["kiln"] + (["buildkit"] if bk else [])
        for change, case in ((False, "cache-fresh-runner"), (True, "cache-one-change")):
            got = {w: [] for w in who}
            for i in range(self.args.rounds):
                for w in who if i % 2 == 0 else reversed(who):
                    r = one(w, change)
                    got[w].append(r)
                    print(f"    {w:8} round {i + 1}: {r.wall:7.2f} s  {r.rss_kib / 1024:6.1f} MiB (client)", flush=True)
            k.wipe(fresh)
            version(False)
            kw = wall(got, "kiln")
            fetched = sum(r.out.count("from the imported cache") for r in got["kiln"])
            ref = f"{size // MIB} MiB image, empty cache per round; layers kiln fetched from the cache: {fetched}"
            if bk:
                bw = wall(got, "buildkit")
                cpu = median([r.cpu for r in got["kiln"]])
                ref += (f"; BuildKit (rootful buildkitd, registry cache import, prune --all per round) {bw:.2f} s,"
                        f" kiln/BuildKit {kw / bw:.2f}; kiln CPU {cpu:.2f} s")
                versus = kw <= 0.3 * bw
            else:
                ref += "; BuildKit not running (run as root with ../shared/buildkit present)"
                versus = None
            if change:
                target = "<= 0.3x BuildKit"
                ok = versus if versus is None else versus and self.rss_ok(got)
            else:
                target = "<= 0.3x BuildKit; < 1 s; no layer downloaded"
                ok = kw < 1.0 and fetched == 0 and self.rss_ok(got) and versus is not False
            self.row(case, got, target, ok, ref, bk_limit=None)

    def single_id(self):
        """What emulating owners and identities costs without a subordinate range:
        kiln in single-id mode (KILN_IDMAP=single) against kiln with the range, on a RUN
        making 100,000 chown calls and on an apt-get install from a local repository
        (scripts/setup.sh's, served here on 127.0.0.1). The RUN step's own time."""
        import re
        import socket

        state = os.environ.get("KILN_CI_STATE", "/var/tmp/kiln-ci")
        n = max(1, int(50 * self.args.scale))
        chown = self.ctx("single-id-chown", f"FROM {DEBIAN}\nRUN mkdir /d && cd /d && seq 1 2000 | xargs touch"
                         f" && for i in $(seq {n}); do chown -R 1000:1000 /d; done\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                   os.path.join(state, "apt-repo"), str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            apt = self.ctx("single-id-apt", f"FROM {REGISTRY}/library/debian-apt:bookworm\n"
                           f"RUN echo 'deb [trusted=yes] http://127.0.0.1:{port}/ ./' > /etc/apt/sources.list"
                           " && rm -f /etc/apt/sources.list.d/* && apt-get update"
                           " && apt-get install -y --no-install-recommends kiln-test-owned\n")
            root = os.path.join(self.work, "single-id-store")

            def step_time(ctx, single):
                self.kiln.wipe(root)
                env = dict(self.kiln.env)
                if single:
                    env["KILN_IDMAP"] = "single"
                # The base image comes first, unmeasured; then the RUN alone.
                r = run([self.kiln.exe, "build", "--root", root, "--progress", "plain", ctx], env=env)
                times = re.findall(r"^#\d+ DONE ([0-9.]+)s$", r.out, re.M)
                return Run(float(times[-1]) if times else r.wall, r.rss_kib, r.cpu, r.out)

            for case, ctx, what in (("single-id-chown", chown, f"{n * 2000} chowns"),
                                    ("single-id-apt", apt, "apt-get update + install")):
                got = {"single": [], "range": []}
                for i in range(self.args.rounds):
                    for mode in ("single", "range") if i % 2 == 0 else ("range", "single"):
                        r = step_time(ctx, mode == "single")
                        got[mode].append(r)
                        print(f"    {mode:8} round {i + 1}: {r.wall:7.2f} s", flush=True)
                single, ranged = wall(got, "single"), wall(got, "range")
                self.row(case, {"kiln": got["single"]}, "(noted: the cost of single-id mode)", None,
                         f"{what}: the RUN took {single:.2f} s in single-id mode, {ranged:.2f} s with a"
                         f" subordinate range ({single / ranged:.1f}x)")
            self.kiln.wipe(root)
        finally:
            server.kill()
            server.wait()

    # -- cases against BuildKit (kiln and buildkitd; both write an OCI archive) -------

    def versus(self):
        """kiln and BuildKit, for the cases buildah has no OCI-archive output for."""
        return [b for b in (self.kiln, self.buildkit) if b]

    def oci_out(self, b):
        out = os.path.join(self.work, "out")
        os.makedirs(out, exist_ok=True)
        dest = os.path.join(out, f"{b.name}.tar")
        if os.path.exists(dest):
            os.remove(dest)
        return dest

    def cold_rounds(self, ctx, *args, settle=False):
        """Each round from an empty store and cache (kiln's store wiped, `buildctl
        prune --all`), writing an OCI archive. With `settle`, both are emptied at the
        start of the round, then `sync` and a minute's wait: on an ext4 without a
        journal (this machine's /var/tmp) the inode allocator skips inodes freed in
        the last 60 s (300 s while unsynced), so a round that creates 20,000 files
        right after another deleted them spends seconds of system time in
        `recently_deleted()` (seen with perf: 0.6-0.9 ms an open(O_CREAT) instead of
        25 us), which measures the previous round's deletions, not the builder. The
        wait only helps in part (a written inode table block makes its freed inodes
        recent for 360 s): the root part gives the run a disk with a journal
        (`journal_disk`), and there the wait is skipped."""
        roots = {b.name: os.path.join(self.work, f"cold-{b.name}") for b in self.versus()}
        fresh = []

        def prepare(b, _i):
            if settle and b is self.kiln:
                # A store of its own each round, as a fresh runner has; all removed
                # after the case.
                roots["kiln"] = os.path.join(self.work, f"cold-kiln-{_i}-{time.time_ns()}")
                fresh.append(roots["kiln"])
            if settle:
                first = self.versus()[0] if _i % 2 == 0 else self.versus()[-1]
                if b is first:
                    for x in self.versus():
                        x.wipe(roots[x.name])
                    run(["sync"])
                    if not self.args.disk:
                        time.sleep(61)
                return
            b.wipe(roots[b.name])

        got = self.rounds(lambda b: b.build(ctx, *args, "--output", f"type=oci,dest={self.oci_out(b)}",
                                            root=roots[b.name]),
                          prepare=prepare, who=self.versus())
        for b in self.versus():
            b.wipe(roots[b.name])
        for r in fresh:
            self.kiln.wipe(r)
        return got

    def context_cold(self):
        ctx = self.tree()
        got = self.cold_rounds(ctx, settle=True)
        self.row("context-cold", got, "(compared)", self.rss_ok(got),
                 f"{len(os.listdir(ctx)) - 2} directories of 100 files; busybox pulled in each round; both"
                 " emptied and synced before each round" + ("" if self.args.disk else ", and left a minute")
                 + " (see `cold_rounds`)")

    def seed_ctx(self):
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        src = os.path.join(self.args.examples or os.path.join(repo, "examples"), "seed")
        ctx = os.path.join(self.work, "ctx", "seed")
        shutil.rmtree(ctx, ignore_errors=True)
        shutil.copytree(src, ctx)
        return ctx

    def seed_cold(self):
        got = self.cold_rounds(self.seed_ctx())
        self.row("seed-cold", got, "(compared)", self.rss_ok(got), "examples/seed, empty store and cache each round")

    def seed_warm(self):
        ctx = self.seed_ctx()
        for b in self.versus():
            b.wipe()  # both empty, so that their disk use compares
            b.build(ctx)
        got = self.rounds(lambda b: b.build(ctx, "--no-cache", "--output", f"type=oci,dest={self.oci_out(b)}"),
                          who=self.versus())
        ref = "examples/seed, base images pulled, --no-cache"
        ok = self.rss_ok(got)
        if self.buildkit:
            # Disk use after the same builds: kiln's store and BuildKit's cache.
            kiln_bytes = int(run(["du", "-sb", self.kiln.root]).out.split()[0])
            bk_bytes = self.buildkit.cache_bytes()
            if bk_bytes:
                ref += (f"; disk use after the rounds: kiln's store {kiln_bytes / MIB:.1f} MiB,"
                        f" BuildKit's cache {bk_bytes / MIB:.1f} MiB (`buildctl du`)")
                ok = ok and kiln_bytes <= bk_bytes
        self.row("seed-warm", got, "(compared); store ≤ BuildKit's cache", ok, ref)

    def seed_multiplatform(self):
        got = self.cold_rounds(self.seed_ctx(), "--platform", "linux/amd64,linux/arm64")
        self.row("seed-multiplatform", got, "(compared)", self.rss_ok(got),
                 "examples/seed for linux/amd64 and linux/arm64 (the arm64 RUN under QEMU), cold")

    def large_base(self):
        """A base image of 5 layers of about 90 MiB each (mixed data), pushed to the
        registry once by kiln (deterministic: the same digest each time)."""
        size = int(90 * MIB * self.args.scale)
        tag = f"5x{size // 1024}k"
        name = f"{REGISTRY}/bench/large-base:{tag}"
        have = subprocess.call(["curl", "-fsS", "-o", "/dev/null", "-H",
                                "Accept: application/vnd.oci.image.manifest.v1+json",
                                f"http://{REGISTRY}/v2/bench/large-base/manifests/{tag}"],
                               stderr=subprocess.DEVNULL)
        if have == 0:
            return name
        ctx = os.path.join(self.work, "ctx", "large-base")
        os.makedirs(ctx, exist_ok=True)
        df = f"FROM {BUSYBOX}\n"
        for i in range(5):
            seed = os.path.join(ctx, f"seed{i}.bin")
            if not os.path.exists(seed) or os.path.getsize(seed) != size:
                write_mixed(seed, size, 60 + i)
            df += (f"RUN --mount=type=bind,source=seed{i}.bin,target=/seed mkdir -p /base{i}"
                   f" && cat /seed > /base{i}/data\n")
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(df)
        root = os.path.join(self.work, "large-base-store")
        self.kiln.build(ctx, "--push", "-t", name, root=root)
        self.kiln.wipe(root)
        return name

    def large_base_cold(self):
        base = self.large_base()
        ctx = self.ctx("large-base-app", f"FROM {base}\nRUN du -s /base0 > /size\n")
        got = self.cold_rounds(ctx)
        self.row("large-base-cold", got, "(pull of the large base)", self.rss_ok(got),
                 f"FROM {base} (5 layers of {90 * self.args.scale:.0f} MiB) + one RUN, empty store and cache each round",
                 bk_limit=0.7)

    def push_1gib(self):
        """A push of a new 1 GiB layer (its RUN made for each round, outside the
        measurement) to an empty repository: every blob but the base's uploaded (the
        layer is in no repository yet, so nothing can be mounted)."""
        size = int(1024 * MIB * self.args.scale)
        ctx = os.path.join(self.work, "ctx", "push-big")
        os.makedirs(ctx, exist_ok=True)
        seed = os.path.join(ctx, "seed.bin")
        if not os.path.exists(seed) or os.path.getsize(seed) != max(MIB, size // 16):
            write_mixed(seed, max(MIB, size // 16), 3)
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(f"FROM {BUSYBOX}\nARG ROUND\nRUN --mount=type=bind,source=seed.bin,target=/seed.bin mkdir -p /data"
                    " && for i in $(seq 16); do cat /seed.bin > /data/part$i; done && echo $ROUND > /data/round\n")
        stamp = str(int(time.time()))
        counter = [0]
        tags = {}

        def prepare(b, _i):
            counter[0] += 1
            tags[b.name] = f"{stamp}-{b.name}-{counter[0]}"
            # Both with the compressed layer ready: kiln makes it when it builds (but
            # not with an archive as the only output, which gets the layer instead),
            # BuildKit when it exports.
            out = [] if b is self.kiln else ["--output", f"type=oci,dest={self.oci_out(b)}"]
            b.build(ctx, "--build-arg", f"ROUND={tags[b.name]}", *out)
            # Written out before the push, which is what is measured.
            run(["sync"])

        # What the registry spends on each push: both builders send it the same
        # blobs, and it takes them at one core.
        reg = registry_pid()
        reg_cpu = {b.name: [] for b in self.versus()}

        def one(b):
            before = proc_cpu(reg)
            r = b.build(ctx, "--build-arg", f"ROUND={tags[b.name]}", "--push", "-t",
                        f"{REGISTRY}/bench/push-{tags[b.name]}:1")
            reg_cpu[b.name].append(proc_cpu(reg) - before)
            return r

        try:
            got = self.rounds(one, prepare=prepare, who=self.versus())
        finally:
            for b in self.versus():
                b.wipe()
        ref = (f"{size / MIB:.0f} MiB layer made anew each round (unmeasured), cached build + push to a new"
               " repository")
        if reg:
            ref += "; the registry's CPU during the push: " + ", ".join(
                f"{n}'s {median(v):.2f} s" for n, v in reg_cpu.items() if v)
        self.row("push-1gib", got, "(a push of every blob)", self.rss_ok(got), ref, bk_limit=0.8)

    def cold_build(self):
        app = os.path.join(self.work, "ctx", "cold")
        os.makedirs(os.path.join(app, "app"), exist_ok=True)
        rnd = random.Random(5)
        for i in range(20):
            with open(os.path.join(app, "app", f"data{i:02}.txt"), "w") as f:
                f.write("\n".join(str(rnd.randrange(10**6)) for _ in range(2000)) + "\n")
        with open(os.path.join(app, "Dockerfile"), "w") as f:
            f.write(
                f"FROM {DEBIAN}\n"
                "WORKDIR /app\n"
                "COPY app/ ./\n"
                "RUN for f in data*.txt; do sort -n \"$f\" > \"sorted-$f\"; done && wc -l sorted-* > manifest\n"
                'CMD ["cat", "/app/manifest"]\n'
            )
        roots = {b.name: os.path.join(self.work, f"cold-{b.name}") for b in self.builders}

        def prepare(b, _i):
            b.wipe(roots[b.name])

        got = self.rounds(lambda b: b.build(app, root=roots[b.name]), prepare=prepare)
        for b in self.builders:
            b.wipe(roots[b.name])
        self.row("cold-build", got, "(compared; peak RSS)", self.rss_ok(got))

    # -- report ---------------------------------------------------------------------

    def report(self, elapsed):
        def s(x, fmt="{:.2f} s"):
            return fmt.format(x) if x is not None else "–"

        kiln_version = run([self.args.kiln, "--version"], check=False).out.strip()
        lines = [
            "# Whole-build benchmarks: kiln, BuildKit and buildah",
            "",
            "Written by `benches/builds.py` (see its header and the README); do not edit by hand.",
            "",
            f"- Machine: {machine()}; work directory on {self.args.disk or fs_type(self.work)}.",
            f"- kiln: {kiln_version}{' (' + self.args.commit + ')' if self.args.commit else ''}, release build.",
        ]
        if self.buildah:
            v = run([self.buildah.exe, "--version"], check=False).out.strip()
            lines.append(
                f"- buildah: {v}, rootless, BUILDAH_ISOLATION=chroot, cgroups disabled, overlay storage, `--layers`."
            )
        else:
            lines.append("- buildah: not installed; not measured.")
        if self.buildkit:
            v = run([self.buildkit.exe, "--version"], check=False).out.strip()
            lines.append(f"- BuildKit: {v}; buildkitd rootful (../shared/buildkit), OCI worker, overlayfs;"
                         " CPU is buildctl's and the daemon's.")
        else:
            lines.append("- BuildKit: not running; not measured.")
        lines += [
            f"- {self.args.rounds} rounds per case, builders alternating; median wall time; peak RSS is the largest"
            " process of any round (kiln's target: under 150 MiB).",
        ]
        if self.args.scale != 1:
            lines.append(f"- **Scaled run (--scale {self.args.scale}): not the targets' figures.**")
        lines += [
            f"- The whole run took {elapsed / 60:.1f} min.",
            "",
            "| case | kiln | buildah | kiln/buildah | BuildKit | kiln/BuildKit | kiln CPU | BuildKit CPU"
            " | kiln peak RSS | buildah peak RSS | target | met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in self.rows:
            lines.append(
                "| {case} | {k} | {b} | {ratio} | {bk} | {bkr} | {kc} | {bkc} | {krss} | {brss} | {target} | {met} |".format(
                    case=r["case"],
                    k=s(r["kiln"]),
                    b=s(r["buildah"]),
                    ratio=s(r["ratio"], "{:.2f}"),
                    bk=s(r["buildkit"]),
                    bkr=s(r["bk_ratio"], "{:.2f}"),
                    kc=s(r["kiln_cpu"]),
                    bkc=s(r["buildkit_cpu"]),
                    krss=s(r["kiln_rss"], "{:.0f} MiB"),
                    brss=s(r["buildah_rss"], "{:.0f} MiB"),
                    target=r["target"],
                    met={True: "yes", False: "**no**", None: "–"}[r["met"]],
                )
            )
        refs = [r for r in self.rows if r["reference"]]
        if refs:
            lines += ["", "References measured in the same run:", ""]
            lines += [f"- {r['case']}: {r['reference']}" for r in refs]
        lines += self.notes
        return "\n".join(lines) + "\n"


BINFMT = "/proc/sys/fs/binfmt_misc"
QEMU_CONF = "/usr/lib/binfmt.d/qemu-aarch64.conf"


def register_qemu():
    """Registers Debian's qemu-aarch64 on the host (with F, so that it works inside
    BuildKit's containers); False when it is not installed or already there."""
    if not os.path.exists(QEMU_CONF):
        return False
    if not os.path.ismount(BINFMT):
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], check=False)
    if os.path.exists(os.path.join(BINFMT, "qemu-aarch64")):
        return False
    with open(QEMU_CONF) as f:
        line = next(l for l in f.read().splitlines() if l.startswith(":"))
    flags = line.rsplit(":", 1)[1]
    if "F" not in flags:
        line += "F"
    try:
        with open(os.path.join(BINFMT, "register"), "w") as f:
            f.write(line)
        return True
    except OSError as e:
        print(f"[bench] cannot register qemu-aarch64: {e}", file=sys.stderr)
        return False


def unregister_qemu():
    try:
        with open(os.path.join(BINFMT, "qemu-aarch64"), "w") as f:
            f.write("-1")
    except OSError:
        pass


def journal_disk(state):
    """Root: a fresh ext4 with a journal, as CI runners' disks are, in a sparse file on
    a loop device with direct I/O, mounted at STATE/bench-disk (`-o discard`, so that
    what the cases delete goes back to the host). This machine's /var/tmp is an ext4
    *without* a journal, where the inode allocator passes over inodes freed in the
    last 60 s (360 s once their inode table block is written again) one by one, each a
    buffer-cache lookup: creating 20,000 files after another builder's round deleted
    as many took 7.4 s of system time instead of 2.3 (perf: `find_inode_bit` ->
    `recently_deleted`), which measured the order of the rounds, not the builders. Returns the mount point, or
    None (then the cases run where they are, and the report says on what)."""
    img = os.path.join(state, "bench-disk.img")
    mnt = os.path.join(state, "bench-disk")
    release_disk(mnt, img)
    os.makedirs(mnt, exist_ok=True)
    try:
        with open(img, "wb") as f:
            f.truncate(200 << 30)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", img], check=True, capture_output=True)
        # Direct I/O, as a disk: a buffered loop device caches every page twice and
        # writes back late, which made the 1 GiB rounds 4.3-6.7 s instead of 2.7.
        dev = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", img], check=True,
                             capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", "-o", "discard", dev, mnt], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", b"") or b""
        print(f"[bench] no disk of its own ({e} {err.decode().strip()}): cases run in {state}", file=sys.stderr)
        release_disk(mnt, img)
        return None
    return mnt


def release_disk(mnt, img):
    if os.path.ismount(mnt):
        subprocess.run(["umount", mnt], capture_output=True)
    if os.path.exists(img):
        held = subprocess.run(["losetup", "-j", img], capture_output=True, text=True).stdout
        for line in held.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)
        os.remove(img)


def as_user(args):
    """Root: build kiln, then run this script as the test user."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    user = os.environ.get("KILN_TEST_USER", "kiln-ci")
    pw = pwd.getpwnam(user)
    state = os.environ.get("KILN_CI_STATE", "/var/tmp/kiln-ci")
    bindir = os.path.join(state, "bench-bin")
    os.makedirs(bindir, exist_ok=True)
    if not args.kiln:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "kiln"], cwd=repo, check=True)
        args.kiln = os.path.join(repo, "target", "release", "kiln")
    shutil.copy(args.kiln, os.path.join(bindir, "kiln"))
    shutil.copy(os.path.abspath(__file__), os.path.join(bindir, "builds.py"))
    examples = os.path.join(bindir, "examples")
    shutil.rmtree(examples, ignore_errors=True)
    shutil.copytree(os.path.join(repo, "examples"), examples)
    disk = None if args.work else journal_disk(state)
    work = args.work or os.path.join(disk or state, "bench")
    os.makedirs(work, exist_ok=True)
    os.chown(work, pw.pw_uid, pw.pw_gid)
    result = os.path.join(work, "RESULTS.md")
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cmd = ["runuser", "-u", user, "--", "env", "-i", f"PATH={PATH}", f"HOME={pw.pw_dir}"]
    cmd += ["python3", os.path.join(bindir, "builds.py"), "--kiln", os.path.join(bindir, "kiln")]
    cmd += ["--work", work, "--out", result, "--rounds", str(args.rounds), "--scale", str(args.scale)]
    cmd += ["--cases", ",".join(args.cases), "--commit", commit, "--examples", examples]
    if args.kiln_only:
        cmd.append("--kiln-only")
    if disk:
        cmd += ["--disk", "an ext4 with a journal of its own (a sparse file on the host's disk, on a loop device with direct I/O;"
                " see `journal_disk`), BuildKit's root on it too"]
    shared_bk = os.path.join(os.path.dirname(repo), "shared", "buildkit")
    bk_dir = os.path.join(disk or state, "bench-buildkit")
    started = False
    if os.path.exists(os.path.join(shared_bk, "up.sh")):
        # BuildKit runs as root, as it does in CI; the test user gets its socket for
        # this run only (whoever holds it controls a root daemon: a bench machine's
        # concern, not kiln's).
        up = subprocess.run(["bash", os.path.join(shared_bk, "up.sh"), bk_dir, REGISTRY.rsplit(":", 1)[1]],
                            capture_output=True, text=True)
        if up.returncode == 0:
            started = True
            addr = up.stdout.strip().splitlines()[-1]
            os.chown(addr.removeprefix("unix://"), pw.pw_uid, pw.pw_gid)
            cmd += ["--buildkit-addr", addr, "--buildctl", os.path.join(bk_dir, "bin", "buildctl")]
            with open(os.path.join(bk_dir, "buildkitd.pid")) as f:
                cmd += ["--buildkit-pid", f.read().strip()]
        else:
            print(f"[bench] BuildKit did not start: {up.stderr.strip()}", file=sys.stderr)
    # BuildKit runs foreign RUN steps only through the host's binfmt_misc (kiln
    # registers QEMU in its own user namespace): registered for the run, removed after.
    binfmt = started and "seed-multiplatform" in args.cases and register_qemu()
    try:
        code = subprocess.run(cmd).returncode
    finally:
        if binfmt:
            unregister_qemu()
        if started:
            subprocess.run(["bash", os.path.join(shared_bk, "down.sh"), bk_dir], capture_output=True)
    if os.path.exists(result):
        out = args.out or os.path.join(repo, "benches", "RESULTS.md")
        shutil.copy(result, out)
        print(f"[bench] table written to {out}")
    if disk:
        release_disk(disk, os.path.join(state, "bench-disk.img"))
    return code


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--kiln", default=os.environ.get("KILN"))
    p.add_argument("--kiln-only", action="store_true", help="do not run buildah even if installed")
    p.add_argument("--work", help="working directory (default /var/tmp/kiln-ci/bench)")
    p.add_argument("--out", help="the table (default benches/RESULTS.md)")
    p.add_argument("--commit", default="")
    p.add_argument("--buildkit-addr", help="a buildkitd to compare with (the root part starts one)")
    p.add_argument("--buildctl", default="buildctl")
    p.add_argument("--buildkit-pid", type=int, help="buildkitd's pid, for its CPU time")
    p.add_argument("--examples", help="the examples directory (default: the repository's)")
    p.add_argument("--disk", help="what the work directory is on, for the report (the root part's disk)")
    args = p.parse_args()
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(CASES)}")
    if os.geteuid() == 0:
        return as_user(args)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args.kiln = args.kiln or os.path.join(repo, "target", "release", "kiln")
    args.work = args.work or os.path.join(os.environ.get("TMPDIR", "/var/tmp"), f"kiln-bench-{os.getuid()}")
    args.out = args.out or os.path.join(repo, "benches", "RESULTS.md")
    if subprocess.call(["curl", "-fsS", "-o", "/dev/null", f"http://{REGISTRY}/v2/"]) != 0:
        print(f"[bench] no registry answers on {REGISTRY}: run scripts/setup.sh first", file=sys.stderr)
        return 1
    for tool in ("pigz", "zstd", "busybox", "tar", "/usr/bin/time"):
        if not shutil.which(tool):
            print(f"[bench] {tool} is missing: run scripts/setup.sh first", file=sys.stderr)
            return 1
    bench = Bench(args)
    if not bench.buildah:
        print("[bench] buildah is not installed (or --kiln-only): measuring kiln alone", flush=True)
    start = time.monotonic()
    status = 0
    for case in args.cases:
        print(f"[bench] {case}", flush=True)
        try:
            if case.startswith("big-layer-"):
                bench.big_layer(case.rsplit("-", 1)[1])
            else:
                getattr(bench, case.replace("-", "_"))()
        except Failed as e:
            print(f"[bench] {case} failed: {e}", file=sys.stderr)
            bench.notes.append(f"\n**{case} failed:** {str(e).splitlines()[0]}")
            status = 1
    for b in bench.builders:
        b.wipe()
    report = bench.report(time.monotonic() - start)
    with open(args.out, "w") as f:
        f.write(report)
    print(report)
    return status


if __name__ == "__main__":
    sys.exit(main())
