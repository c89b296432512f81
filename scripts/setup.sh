#!/usr/bin/env bash
# Prepares a Debian 12 machine for kiln's demo and end-to-end tests. Run as root;
# safe to run again. It:
#   - installs the registry, skopeo, umoci, uidmap, busybox-static, attr (getfattr) and
#     apache2-utils (htpasswd, for the registry-auth test), keyutils (keyctl, for the
#     session-keyring test) and qemu-user-static (foreign
#     RUN steps; kiln registers it itself, nothing is registered on the host), and for
#     benches/builds.py buildah, pigz, zstd and GNU time, and protoc (the LLB test
#     decodes kiln's definition with --decode_raw), with apt-get,
#   - creates the unprivileged user the tests run kiln as, with a subordinate id range,
#   - starts a registry on 127.0.0.1:5000 with its own config and storage (not the
#     system service),
#   - seeds base images with independent tools (umoci, skopeo, python3), never kiln:
#       127.0.0.1:5000/library/busybox:latest        linux/amd64 + linux/arm64 index
#       127.0.0.1:5000/library/debian:bookworm-slim   Debian's dash, coreutils, grep, sed
#       127.0.0.1:5000/library/debian-apt:bookworm    mmdebstrap's minbase (apt, dpkg, passwd)
#       127.0.0.1:5000/library/debian-python:bookworm the same with python3 and venv
#   - makes a flat apt repository in $STATE/apt-repo (apt-utils' apt-ftparchive) and a
#     directory of wheels (Flask's) in $STATE/wheels, which the tests serve on 127.0.0.1,
set -euo pipefail

STATE=${KILN_CI_STATE:-/var/tmp/kiln-ci}
REGISTRY=127.0.0.1:5000
TEST_USER=${KILN_TEST_USER:-kiln-ci}
DEBIAN_PKGS="dash coreutils grep sed findutils libc6 libgcc-s1 gcc-12-base libacl1 libattr1 libgmp10 libselinux1 libpcre2-8-0"

log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/setup.sh must run as root (it installs packages and creates a user)" >&2
  exit 1
fi

install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  local need=0
  for p in docker-registry skopeo umoci uidmap busybox-static attr python3 curl apache2-utils qemu-user-static buildah pigz zstd time protobuf-compiler keyutils python3-venv mmdebstrap apt-utils tmux git openssh-client; do
    dpkg -s "$p" >/dev/null 2>&1 || need=1
  done
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    need=1
  fi
  if [ "$need" = 1 ] || [ ! -f "$STATE/.apt-updated" ]; then
    log "installing packages"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
      docker-registry skopeo umoci uidmap busybox-static attr python3 curl apache2-utils qemu-user-static buildah pigz zstd time protobuf-compiler keyutils python3-venv mmdebstrap apt-utils tmux git openssh-client ca-certificates >/dev/null
    mkdir -p "$STATE" && touch "$STATE/.apt-updated"
  fi
}

create_user() {
  if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    log "creating user $TEST_USER"
    useradd --create-home --shell /bin/bash "$TEST_USER"
  fi
  grep -q "^$TEST_USER:" /etc/subuid 2>/dev/null || usermod --add-subuids 200000-265535 "$TEST_USER"
  grep -q "^$TEST_USER:" /etc/subgid 2>/dev/null || usermod --add-subgids 200000-265535 "$TEST_USER"
}

start_registry() {
  if curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
    log "registry already answers on $REGISTRY"
    return
  fi
  local dir="$STATE/registry"
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
CONF
  log "starting docker-registry on $REGISTRY (storage $dir/data)"
  nohup docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 1 50); do
    curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "registry did not start; its log:" >&2
  cat "$dir/log" >&2
  exit 1
}

have_image() {
  skopeo inspect --tls-verify=false --raw "docker://$REGISTRY/$1" >/dev/null 2>&1
}

# Builds an image from a rootfs directory with umoci into layout $1 under tag $2.
umoci_image() {
  local layout=$1 tag=$2 rootfs=$3 arch=$4 cmd=$5 bundle
  bundle=$(mktemp -d)
  rmdir "$bundle"
  [ -d "$layout" ] || umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci unpack --image "$layout:$tag" "$bundle"
  cp -a "$rootfs/." "$bundle/rootfs/"
  umoci repack --image "$layout:$tag" "$bundle"
  umoci config --image "$layout:$tag" --architecture "$arch" --os linux \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.cmd "$cmd"
  rm -rf "$bundle"
}

base_files() {
  local root=$1
  mkdir -p "$root"/{bin,etc,tmp,proc,dev,sys,root,home,var/tmp}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

seed_busybox() {
  have_image library/busybox:latest && return
  log "seeding $REGISTRY/library/busybox:latest (linux/amd64, linux/arm64)"
  local work layout
  work=$(mktemp -d)
  chmod 755 "$work"
  layout="$work/oci"
  (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root busybox-static:amd64 busybox-static:arm64)
  for arch in amd64 arm64; do
    dpkg-deb -x "$work"/busybox-static_*_"$arch".deb "$work/deb-$arch"
    local root="$work/root-$arch"
    base_files "$root"
    cp "$work/deb-$arch/bin/busybox" "$root/bin/busybox"
    for applet in $("$work/deb-amd64/bin/busybox" --list); do
      [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    umoci_image "$layout" "$arch" "$root" "$arch" sh
  done
  # An image index with both platforms, tagged "latest" in the layout.
  python3 - "$layout" <<'PY'
import hashlib, json, os, sys
layout = sys.argv[1]
idx_path = os.path.join(layout, "index.json")
idx = json.load(open(idx_path))
by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in idx["manifests"]}
entries = []
for arch in ("amd64", "arm64"):
    m = dict(by_tag[arch])
    m.pop("annotations", None)
    m["platform"] = {"architecture": arch, "os": "linux"}
    entries.append(m)
blob = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": entries}, separators=(",", ":")).encode()
digest = hashlib.sha256(blob).hexdigest()
open(os.path.join(layout, "blobs", "sha256", digest), "wb").write(blob)
idx["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                         "digest": "sha256:" + digest, "size": len(blob),
                         "annotations": {"org.opencontainers.image.ref.name": "latest"}})
json.dump(idx, open(idx_path, "w"))
PY
  skopeo copy -q --all --dest-tls-verify=false "oci:$layout:latest" "docker://$REGISTRY/library/busybox:latest"
  rm -rf "$work"
}

seed_debian() {
  have_image library/debian:bookworm-slim && return
  log "seeding $REGISTRY/library/debian:bookworm-slim"
  local work root
  work=$(mktemp -d)
  chmod 755 "$work"
  root="$work/root"
  mkdir -p "$work/debs"
  # shellcheck disable=SC2086
  (cd "$work/debs" && apt-get download -qq -o APT::Sandbox::User=root $DEBIAN_PKGS)
  for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
  base_files "$root"
  printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\ndaemon:x:1:\nstaff:x:50:\nnogroup:x:65534:\n' >"$root/etc/group"
  ln -sf dash "$root/bin/sh"
  echo 'ID=debian' >"$root/etc/os-release"
  umoci_image "$work/oci" bookworm-slim "$root" amd64 sh
  skopeo copy -q --dest-tls-verify=false "oci:$work/oci:bookworm-slim" "docker://$REGISTRY/library/debian:bookworm-slim"
  rm -rf "$work"
}

# Debian bases from Debian's own packages, with mmdebstrap's minbase (apt, dpkg,
# passwd): files of system users and groups in them (shadow, _apt's directories).
#   seed_mmdebstrap NAME PACKAGES CMD   (NAME under library/, tag bookworm)
seed_mmdebstrap() {
  local name=$1 packages=$2 cmd=$3 work
  have_image "library/$name:bookworm" && return
  log "seeding $REGISTRY/library/$name:bookworm (mmdebstrap minbase + $packages)"
  work=$(mktemp -d)
  chmod 755 "$work"
  mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$work/root"
  umoci_image "$work/oci" bookworm "$work/root" amd64 "$cmd"
  skopeo copy -q --dest-tls-verify=false "oci:$work/oci:bookworm" "docker://$REGISTRY/library/$name:bookworm"
  rm -rf "$work"
}

# A flat apt repository (the tests serve it on 127.0.0.1) with one package whose
# files belong to www-data and whose postinst makes a system user and gives it a
# directory: what a package install needs of owners and identities.
make_apt_repo() {
  local repo="$STATE/apt-repo"
  [ -f "$repo/Release" ] && return
  log "making the test apt repository in $repo"
  local work pkg
  work=$(mktemp -d)
  pkg="$work/kiln-test-owned"
  mkdir -p "$pkg/DEBIAN" "$pkg/var/www/kiln-test" "$pkg/usr/share/kiln-test"
  echo served >"$pkg/var/www/kiln-test/index.html"
  echo data >"$pkg/usr/share/kiln-test/data"
  chown -R 33:33 "$pkg/var/www/kiln-test"
  cat >"$pkg/DEBIAN/control" <<CONTROL
Package: kiln-test-owned
Version: 1.0
Architecture: all
Maintainer: kiln tests <tests@kiln.invalid>
Depends: adduser, passwd
Description: files of www-data, and a system user made at install
CONTROL
  cat >"$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
getent passwd kilnsvc >/dev/null || adduser --system --group --quiet --no-create-home kilnsvc
install -d -o kilnsvc -g kilnsvc -m 0750 /var/lib/kiln-test
POSTINST
  chmod 0755 "$pkg/DEBIAN/postinst"
  rm -rf "$repo"
  mkdir -p "$repo"
  dpkg-deb --build "$pkg" "$repo/kiln-test-owned_1.0_all.deb" >/dev/null
  (cd "$repo" && apt-ftparchive packages . >Packages && apt-ftparchive release . >Release)
  chmod -R a+rX "$repo"
  rm -rf "$work"
}

# Flask and its dependencies as wheels, for a package index the tests serve on
# 127.0.0.1 (pip's --find-links reads the directory listing).
make_wheels() {
  local dir="$STATE/wheels"
  [ -f "$dir/.complete" ] && return
  log "downloading the test wheels into $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$STATE/moto/bin/pip" download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 -d "$dir" flask
  touch "$dir/.complete"
  chmod -R a+rX "$dir"
}

# moto's S3 server, for the s3 cache test (the test starts it on 127.0.0.1), in a
# virtualenv of Debian's python3 that the test user can run.
install_moto() {
  local venv="$STATE/moto"
  [ -x "$venv/bin/moto_server" ] && return
  log "installing moto's S3 server into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]'
}

mkdir -p "$STATE"
install_packages
create_user
start_registry
seed_busybox
seed_debian
seed_mmdebstrap debian-apt passwd bash
# like python:3.11-slim
seed_mmdebstrap debian-python passwd,python3,python3-venv python3
make_apt_repo
install_moto
make_wheels
log "ready: registry $REGISTRY, test user $TEST_USER"
