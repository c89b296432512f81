#!/usr/bin/env bash
# kiln's demo (the README's main job): starts a local registry, seeds base images,
# then builds examples/seed as an unprivileged user for linux/amd64 and linux/arm64
# (the arm64 RUN under QEMU that kiln registers itself), exports it as an OCI tarball,
# pushes it, and reads both back with skopeo and umoci. Run as root: sudo scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

STATE=${KILN_CI_STATE:-/var/tmp/kiln-ci}
USER_NAME=${KILN_TEST_USER:-kiln-ci}
IMAGE=127.0.0.1:5000/demo/seed:latest

bash scripts/setup.sh
cargo build --quiet --bin kiln
install -m 0755 -D target/debug/kiln "$STATE/bin/kiln"
work=$(mktemp -d /tmp/kiln-demo.XXXXXX)
cp -r examples/seed "$work/ctx"
chown -R "$USER_NAME" "$work"
as_user() { runuser -u "$USER_NAME" -- env HOME="$(getent passwd "$USER_NAME" | cut -d: -f6)" "$@"; }

echo "== kiln build (as $USER_NAME, uid $(id -u "$USER_NAME")): export and push"
PLATFORMS=linux/amd64,linux/arm64
as_user "$STATE/bin/kiln" build --progress plain --platform "$PLATFORMS" -t "$IMAGE" -o "type=oci,dest=$work/seed.tar" --push "$work/ctx"
echo "== again: everything is cached"
as_user "$STATE/bin/kiln" build --progress plain --platform "$PLATFORMS" -t "$IMAGE" --push "$work/ctx" 2>&1 | grep -E 'CACHED|digest|already exists'
echo "== skopeo reads the pushed index and each platform's image"
skopeo inspect --raw --tls-verify=false "docker://$IMAGE" | python3 -m json.tool
for arch in amd64 arm64; do
  skopeo inspect --tls-verify=false --override-arch "$arch" "docker://$IMAGE" | grep -E '"(Architecture|Digest)"'
done
echo "== umoci unpacks each platform from the OCI tarball"
mkdir "$work/layout" && tar -xf "$work/seed.tar" -C "$work/layout"
for arch in amd64 arm64; do
  skopeo copy -q --override-arch "$arch" "oci:$work/layout:latest" "oci:$work/$arch:latest"
  chown -R "$USER_NAME" "$work/$arch"
  as_user umoci unpack --rootless --image "$work/$arch:latest" "$work/bundle-$arch" >/dev/null
  echo "-- $arch:"
  cat "$work/bundle-$arch/rootfs/app/site/index.html"
done
echo "== done: $IMAGE, $work/seed.tar"
