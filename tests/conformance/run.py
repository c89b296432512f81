#!/usr/bin/env python3
"""The differential suite: every case built by BuildKit (the oracle) and by kiln, the
images compared.

Each case in tests/conformance/cases/*.txt is a Dockerfile and its context in txtar
form (`-- NAME --` lines start files; the first file is `Dockerfile`; `-- NAME MODE --`
sets an octal mode, `NAME/` is a directory, and a body of `@symlink T`, `@hardlink F`,
`@tar`/`@tgz`/`@tbz2`/`@txz` lines makes a symlink, a hard link or a small archive; `@dir` a
directory, `@keep` only sets the mode). Header lines
before the first file may set `# build-arg: K=V`, `# target: STAGE`, `# platform: P`
and `# secret: id=ID,src=FILE` (FILE in the context); `# llb` also builds the case
through `kiln build --emit-llb` on the same buildkitd, which must give BuildKit's own
image. `REGISTRY` in
any file becomes the local registry.

Remote inputs come from servers the suite starts on 127.0.0.1: files under `served/`
are served over HTTP at `HTTPROOT/` (python's http.server, with Last-Modified), and
files under `repo/` become a git repository (one commit on `main`, tagged `v1`) served
by `git daemon` at `GITROOT` (neither directory is part of the context). A header
`# build-context: NAME=VALUE` gives both builders a named context: VALUE is a URL
(HTTPROOT and GITROOT replaced), or `layout:IMAGE` for an OCI layout that skopeo makes
of IMAGE (kiln gets `oci-layout://DIR:v1`, BuildKit the layout as an OCI store).

BuildKit's dockerfile.v0 frontend builds each case through buildctl (buildkitd runs as
root, started by the caller with ../shared/buildkit/up.sh); kiln builds it as the
unprivileged user. Both write OCI archives, compared on:
  - the outcome: what BuildKit rejects, kiln must reject;
  - the final filesystem: paths, types, modes, owners, content digests, link targets,
    hard-link groups, xattrs (not times: both builders stamp files with build time);
  - the whole image config, every field including empty ones and each history entry's
    created_by, comment and empty_layer (not the `created` times, nor diff_ids, which
    hash file times; the number of layers is compared).

It prints one line per case and `N/M equal`. A case that differs must be listed in
tests/conformance/allowed.txt (kept on purpose, with the reason) or known.txt
(divergences not fixed yet); otherwise, or when a listed case has become equal, it
exits 1.

Run as root: run.py --addr unix:///var/tmp/bk/buildkitd.sock --user kiln-ci --kiln BIN
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_case(path):
    """(options, files) of a txtar case."""
    opts = {"build-arg": [], "target": None, "platform": None, "secret": [], "llb": False,
            "build-context": []}
    files, name, buf = [], None, []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for line in lines:
        if line.startswith("-- ") and line.endswith(" --") and len(line) > 6:
            if name is not None:
                files.append((name, "\n".join(buf)))
            name, buf = line[3:-3].strip(), []
            continue
        if name is None:
            if line.startswith("# build-arg:"):
                opts["build-arg"].append(line.split(":", 1)[1].strip())
            elif line.startswith("# target:"):
                opts["target"] = line.split(":", 1)[1].strip()
            elif line.strip() == "# llb":
                opts["llb"] = True
            elif line.startswith("# secret:"):
                opts["secret"].append(line.split(":", 1)[1].strip())
            elif line.startswith("# platform:"):
                opts["platform"] = line.split(":", 1)[1].strip()
            elif line.startswith("# build-context:"):
                opts["build-context"].append(line.split(":", 1)[1].strip())
            continue
        buf.append(line)
    if name is not None:
        files.append((name, "\n".join(buf)))
    return opts, files


def write_context(ctx, files, registry, remote=None):
    modes = []
    for name, text in files:
        # `-- NAME MODE --` sets an octal mode (after everything is written).
        parts = name.rsplit(" ", 1)
        if len(parts) == 2 and parts[1].isdigit():
            name = parts[0]
            modes.append((os.path.join(ctx, name), int(parts[1], 8)))
        p = os.path.join(ctx, name)
        if text.strip() == "@dir":
            os.makedirs(p, exist_ok=True)
            continue
        if text.strip() == "@keep":  # only the mode
            continue
        if text.startswith("@hardlink "):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            os.link(os.path.join(ctx, text[len("@hardlink "):].strip()), p)
            continue
        if name.endswith("/"):
            os.makedirs(p, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if text.startswith("@symlink "):
            os.symlink(text[len("@symlink "):].strip(), p)
            continue
        if text.split("\n", 1)[0] in ("@tar", "@tgz", "@tbz2", "@txz"):
            # `@tar` (`@tgz`, `@tbz2`, `@txz`: compressed) then lines `PATH=CONTENT` (a
            # file), `PATH/` (a directory) or `PATH->TARGET` (a symlink): a small
            # archive made here.
            mode = {"@tar": "w", "@tgz": "w:gz", "@tbz2": "w:bz2", "@txz": "w:xz"}[text.split("\n", 1)[0]]
            with tarfile.open(p, mode) as t:
                for spec in text.split("\n")[1:]:
                    if not spec:
                        continue
                    info = tarfile.TarInfo(spec.split("=", 1)[0].split("->", 1)[0].rstrip("/"))
                    info.mtime, info.mode = 1700000000, 0o644
                    data = b""
                    if "->" in spec and "=" not in spec:
                        info.type, info.linkname = tarfile.SYMTYPE, spec.split("->", 1)[1]
                    elif spec.endswith("/"):
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                    else:
                        data = spec.split("=", 1)[1].encode()
                        info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
            continue
        with open(p, "w", encoding="utf-8") as f:
            text = text.replace("REGISTRY", registry)
            for k, v in (remote or {}).items():
                text = text.replace(k, v)
            f.write(text)
            if text and not text.endswith("\n"):
                f.write("\n")
    for p, mode in sorted(modes, key=lambda m: -len(m[0])):
        os.chmod(p, mode)


def blob(layout_tar, digest):
    return layout_tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1]).read()


def load_image(path):
    """(config, layers as bytes) of the one image in an OCI archive."""
    with tarfile.open(path) as t:
        index = json.loads(t.extractfile("index.json").read())
        desc = index["manifests"][0]
        m = json.loads(blob(t, desc["digest"]))
        while "manifests" in m:  # an index: the linux/amd64 image
            pick = [d for d in m["manifests"]
                    if d.get("platform", {}).get("architecture") in ("amd64", None)]
            m = json.loads(blob(t, (pick or m["manifests"])[0]["digest"]))
        config = json.loads(blob(t, m["config"]["digest"]))
        layers = [(l["mediaType"], blob(t, l["digest"])) for l in m.get("layers") or []]
    return config, layers


def decompress(media, data):
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                              check=True).stdout
    return data


KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
         tarfile.SYMTYPE: "symlink", tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "char",
         tarfile.BLKTYPE: "block"}


def clean(name):
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def filesystem(layers):
    """path -> entry, applying layers with their whiteouts; hard links grouped."""
    fs = {}
    link_of = {}  # path -> the path it is a hard link of (its group's first)
    for media, data in layers:
        with tarfile.open(fileobj=io.BytesIO(decompress(media, data))) as t:
            for m in t:
                p = clean(m.name)
                d, base = os.path.split(p)
                if base == ".wh..wh..opq":
                    for q in [q for q in fs if q.startswith(d.rstrip("/") + "/")]:
                        del fs[q]
                    continue
                if base.startswith(".wh."):
                    gone = os.path.join(d, base[4:])
                    for q in [q for q in fs if q == gone or q.startswith(gone + "/")]:
                        del fs[q]
                    continue
                old = fs.get(p)
                if old and not (old["type"] == "dir" and m.isdir()):
                    for q in [q for q in fs if q.startswith(p + "/")]:
                        del fs[q]
                xattrs = {k[len("SCHILY.xattr."):]: v for k, v in m.pax_headers.items()
                          if k.startswith("SCHILY.xattr.")}
                if m.islnk():
                    target = clean(m.linkname)
                    src = fs.get(target)
                    root = link_of.get(target, target)
                    entry = dict(src) if src else {"type": "file", "missing": target}
                    entry["link"] = root
                    link_of[p] = root
                    if src is not None:
                        fs[target] = dict(src, link=root)
                    fs[p] = entry
                    continue
                entry = {"type": KINDS.get(m.type, "other:" + str(m.type)),
                         "mode": oct(m.mode & 0o7777), "uid": m.uid, "gid": m.gid,
                         "xattrs": xattrs}
                if m.issym():
                    entry["target"] = m.linkname
                if m.isfile():
                    entry["sha256"] = hashlib.sha256(t.extractfile(m).read()).hexdigest()
                    entry["size"] = m.size
                if m.ischr() or m.isblk():
                    entry["dev"] = (m.devmajor, m.devminor)
                link_of.pop(p, None)
                fs[p] = entry
    # Hard-link groups by member set, whichever path each builder wrote first.
    groups = {}
    for p, e in fs.items():
        if "link" in e:
            groups.setdefault(e["link"], set()).add(p)
    for members in groups.values():
        name = min(members)
        for p in members:
            fs[p] = dict(fs[p], link=name, links=sorted(members))
    return fs


def comparable_config(c):
    c = json.loads(json.dumps(c))
    c.pop("created", None)
    for h in c.get("history", []):
        h.pop("created", None)
    rootfs = c.get("rootfs", {})
    rootfs["layers"] = len(rootfs.pop("diff_ids", None) or [])
    return c


def diff_dicts(a, b, path=""):
    """Lines saying where two JSON values differ (a: BuildKit, b: kiln)."""
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in b:
                out.append(f"{path}/{k}: BuildKit {json.dumps(a[k])}, kiln has none")
            elif k not in a:
                out.append(f"{path}/{k}: kiln {json.dumps(b[k])}, BuildKit has none")
            else:
                out.extend(diff_dicts(a[k], b[k], f"{path}/{k}"))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(diff_dicts(x, y, f"{path}[{i}]"))
    elif a != b:
        out.append(f"{path}: BuildKit {json.dumps(a)}, kiln {json.dumps(b)}")
    return out


def compare(bk_tar, kiln_tar):
    bc, bl = load_image(bk_tar)
    kc, kl = load_image(kiln_tar)
    out = ["config" + l for l in diff_dicts(comparable_config(bc), comparable_config(kc))]
    bf, kf = filesystem(bl), filesystem(kl)
    for p in sorted(set(bf) | set(kf)):
        if p not in kf:
            out.append(f"fs {p}: only in BuildKit's ({bf[p]['type']})")
        elif p not in bf:
            out.append(f"fs {p}: only in kiln's ({kf[p]['type']})")
        elif bf[p] != kf[p]:
            diffs = diff_dicts(bf[p], kf[p])
            out.append(f"fs {p}: " + "; ".join(d.lstrip("/") for d in diffs))
    return out


class Servers:
    """An HTTP server and a git daemon on 127.0.0.1 for every case's remote inputs:
    `served/` of case NAME at http://127.0.0.1:PORT/NAME/, `repo/` at
    git://127.0.0.1:PORT/NAME/repo.git."""

    def __init__(self, root):
        import functools
        import http.server
        import socket
        import threading
        self.root = root
        os.makedirs(os.path.join(root, "http"), exist_ok=True)
        os.makedirs(os.path.join(root, "git"), exist_ok=True)

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

        handler = functools.partial(Quiet, directory=os.path.join(root, "http"))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            self.git_port = sk.getsockname()[1]
        exec_path = subprocess.run(["git", "--exec-path"], capture_output=True,
                                   text=True, check=True).stdout.strip()
        self.git = subprocess.Popen(
            [os.path.join(exec_path, "git-daemon"), "--reuseaddr", "--export-all",
             "--listen=127.0.0.1", f"--port={self.git_port}",
             "--base-path=" + os.path.join(root, "git"), os.path.join(root, "git")],
            stderr=subprocess.DEVNULL)
        import time
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.git_port), 1).close()
                break
            except OSError:
                time.sleep(0.05)

    def names(self, case):
        return {"HTTPROOT": f"http://127.0.0.1:{self.http.server_address[1]}/{case}",
                "GITROOT": f"git://127.0.0.1:{self.git_port}/{case}/repo.git"}

    def publish(self, case, ctx):
        """Moves ctx/served and ctx/repo to where the servers serve them."""
        served = os.path.join(ctx, "served")
        if os.path.isdir(served):
            dest = os.path.join(self.root, "http", case)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(served, dest)
        repo = os.path.join(ctx, "repo")
        if os.path.isdir(repo):
            bare = os.path.join(self.root, "git", case, "repo.git")
            shutil.rmtree(os.path.dirname(bare), ignore_errors=True)
            os.makedirs(os.path.dirname(bare))
            g = ["git", "-c", "user.name=conformance", "-c", "user.email=c@kiln.invalid",
                 "-c", "init.defaultBranch=main"]
            for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "one"],
                        ["tag", "v1"]):
                subprocess.run(g + ["-C", repo] + cmd, check=True)
            subprocess.run(["git", "clone", "-q", "--bare", repo, bare], check=True)
            shutil.rmtree(repo)

    def stop(self):
        self.http.shutdown()
        self.git.kill()
        self.git.wait()


def layout_of(image, dest):
    """An OCI layout of `image` at `dest` (tag v1), made by skopeo; its manifest digest."""
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "docker://" + image,
                    f"oci:{dest}:v1"], check=True)
    with open(os.path.join(dest, "index.json")) as f:
        return json.load(f)["manifests"][0]["digest"]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def listed(name):
    out = {}
    p = os.path.join(HERE, name)
    if os.path.exists(p):
        for line in open(p, encoding="utf-8"):
            line = line.strip()
            if line and not line.startswith("#"):
                case, _, why = line.partition(":")
                out[case.strip()] = why.strip()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True, help="buildkitd's socket address")
    ap.add_argument("--buildctl", default="buildctl")
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--user", required=True, help="the unprivileged user kiln runs as")
    ap.add_argument("--registry", default="127.0.0.1:5000")
    ap.add_argument("--work", default=None)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("only", nargs="*")
    a = ap.parse_args()

    # The oracle must answer: a daemon that is down is no case BuildKit rejects.
    probe = run([a.buildctl, "--addr", a.addr, "debug", "workers"])
    if probe.returncode != 0:
        print(f"buildkitd does not answer on {a.addr}: {probe.stderr.strip()}")
        return 2
    cases_dir = os.path.join(HERE, "cases")
    names = sorted(f[:-4] for f in os.listdir(cases_dir) if f.endswith(".txt"))
    if a.only:
        names = [n for n in names if any(o in n for o in a.only)]
    allowed, known = listed("allowed.txt"), listed("known.txt")
    work = a.work or tempfile.mkdtemp(prefix="kiln-conformance-")
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)
    store = os.path.join(work, "kiln-store")
    os.makedirs(store, exist_ok=True)
    shutil.chown(store, a.user)
    equal, bad, lines = 0, [], []
    llb_equal, llb_total = 0, 0
    servers = Servers(os.path.join(work, "servers"))
    for name in names:
        opts, files = parse_case(os.path.join(cases_dir, name + ".txt"))
        d = os.path.join(work, name)
        ctx = os.path.join(d, "ctx")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(ctx)
        remote = servers.names(name)
        write_context(ctx, files, a.registry, remote)
        servers.publish(name, ctx)
        # The context belongs to the user kiln runs as (so modes like 0700 stay).
        subprocess.run(["chown", "-R", a.user, d], check=True)
        bk_tar, kiln_tar = os.path.join(d, "buildkit.tar"), os.path.join(d, "kiln.tar")
        bk_cmd = [a.buildctl, "--addr", a.addr, "build", "--progress", "plain",
                  "--frontend", "dockerfile.v0", "--local", "context=" + ctx,
                  "--local", "dockerfile=" + ctx, "--output", "type=oci,dest=" + bk_tar]
        kiln_cmd = ["runuser", "-u", a.user, "--", a.kiln, "build", "--root", store,
                    "--progress", "plain", "-o", "type=oci,dest=" + kiln_tar]
        for ba in opts["build-arg"]:
            bk_cmd += ["--opt", "build-arg:" + ba]
            kiln_cmd += ["--build-arg", ba]
        if opts["target"]:
            bk_cmd += ["--opt", "target=" + opts["target"]]
            kiln_cmd += ["--target", opts["target"]]
        for sec in opts["secret"]:
            # `id=ID,src=FILE`, FILE relative to the context.
            fields = dict(f.split("=", 1) for f in sec.split(","))
            spec = f"id={fields['id']},src={os.path.join(ctx, fields['src'])}"
            bk_cmd += ["--secret", spec]
            kiln_cmd += ["--secret", spec]
        if opts["platform"]:
            bk_cmd += ["--opt", "platform=" + opts["platform"]]
            kiln_cmd += ["--platform", opts["platform"]]
        oci_stores = []
        for bc in opts["build-context"]:
            cname, value = bc.split("=", 1)
            for k, v in remote.items():
                value = value.replace(k, v)
            if value.startswith("layout:"):
                layout = os.path.join(d, "layout-" + cname)
                digest = layout_of(value[len("layout:"):].replace("REGISTRY", a.registry), layout)
                subprocess.run(["chown", "-R", a.user, layout], check=True)
                oci_stores += ["--oci-layout", f"{cname}={layout}"]
                bk_cmd += ["--opt", f"context:{cname}=oci-layout://{cname}@{digest}"]
                kiln_cmd += ["--build-context", f"{cname}=oci-layout://{layout}:v1"]
            else:
                bk_cmd += ["--opt", f"context:{cname}={value}"]
                kiln_cmd += ["--build-context", f"{cname}={value}"]
        bk_cmd += oci_stores
        kiln_cmd.append(ctx)
        bk = run(bk_cmd)
        kb = run(kiln_cmd, cwd=d)
        if opts["llb"] and bk.returncode == 0:
            # The hand-off: kiln's LLB for the same case, run by the same buildkitd
            # with the one command the README gives, must give BuildKit's own image.
            md_path, llb_path = os.path.join(d, "llb.json"), os.path.join(d, "build.llb")
            llb_tar = os.path.join(d, "llb.tar")
            emit = [c for c in kiln_cmd if not c.startswith("type=oci")]
            emit = emit[:-1] + ["--emit-llb", "--metadata-file", md_path, ctx]
            emit.remove("-o")
            with open(llb_path, "wb") as out:
                e = subprocess.run(emit, stdout=out, stderr=subprocess.PIPE, text=False, cwd=d)
            if e.returncode != 0:
                llb_diffs = ["llb: kiln --emit-llb failed: "
                             + e.stderr.decode(errors="replace").strip()[-300:]]
            elif "buildctl.exporter-attr" not in json.load(open(md_path)):
                llb_diffs = ["llb: kiln's metadata file has no buildctl.exporter-attr"]
            else:
                attr = json.load(open(md_path))["buildctl.exporter-attr"]
                cmd = [a.buildctl, "--addr", a.addr, "build", "--progress", "plain",
                       "--local", "context=" + ctx,
                       "--output", f"type=oci,dest={llb_tar},{attr}"] + oci_stores
                for sec in opts["secret"]:
                    fields = dict(f.split("=", 1) for f in sec.split(","))
                    cmd += ["--secret", f"id={fields['id']},src={os.path.join(ctx, fields['src'])}"]
                with open(llb_path, "rb") as inp:
                    r = subprocess.run(cmd, stdin=inp, capture_output=True, text=True)
                if r.returncode != 0:
                    llb_diffs = ["llb: buildctl failed on kiln's definition: "
                                 + (r.stderr.strip().splitlines() or ["?"])[-1]]
                else:
                    llb_diffs = ["llb " + x for x in compare(bk_tar, llb_tar)]
            llb_total += 1
            if not llb_diffs:
                llb_equal += 1
        else:
            llb_diffs = []
        if bk.returncode != 0 and kb.returncode != 0:
            diffs = []
            verdict = "equal (both reject)"
        elif bk.returncode != 0:
            diffs = ["outcome: BuildKit rejects it, kiln builds it: "
                     + (bk.stderr.strip().splitlines() or ["?"])[-1]]
            verdict = "DIFFERENT"
        elif kb.returncode != 0:
            diffs = ["outcome: BuildKit builds it, kiln rejects it: "
                     + (kb.stderr.strip().splitlines() or ["?"])[-1]]
            verdict = "DIFFERENT"
        else:
            diffs = compare(bk_tar, kiln_tar)
            verdict = "DIFFERENT" if diffs else "equal"
        diffs += llb_diffs
        if llb_diffs:
            verdict = "DIFFERENT"
        elif opts["llb"] and bk.returncode == 0 and not diffs:
            verdict += " (and through LLB)"
        if not diffs:
            equal += 1
            if name in known or name in allowed:
                bad.append(f"{name}: now equal, but still listed (remove it from the list)")
        else:
            note = ""
            if name in allowed:
                note = f" (allowed: {allowed[name]})"
            elif name in known:
                note = f" (known: {known[name]})"
            else:
                bad.append(f"{name}: differs and is not listed")
            verdict += note
        lines.append(f"{name}: {verdict}")
        print(f"{name}: {verdict}", flush=True)
        for x in diffs:
            print(f"    {x}", flush=True)
        if a.verbose and diffs:
            print(kb.stderr[-3000:], flush=True)
        if not diffs and not a.work:
            shutil.rmtree(d, ignore_errors=True)
    servers.stop()
    print(f"\n{equal}/{len(names)} equal", flush=True)
    print(f"{llb_equal}/{llb_total} equal through kiln's LLB on buildkitd", flush=True)
    for b in bad:
        print("FAIL " + b)
    if not a.work:
        subprocess.run(["runuser", "-u", a.user, "--", a.kiln, "--root", store, "prune",
                        "--all", "--force"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
