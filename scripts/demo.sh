#!/usr/bin/env bash
# kiln's demo (the README's main job): starts a local registry, seeds base images,
# then builds examples/seed as an unprivileged user, exports it as an OCI tarball,
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
as_user "$STATE/bin/kiln" build --progress plain -t "$IMAGE" -o "type=oci,dest=$work/seed.tar" --push "$work/ctx"
echo "== again: everything is cached"
as_user "$STATE/bin/kiln" build --progress plain -t "$IMAGE" --push "$work/ctx" 2>&1 | grep -E 'CACHED|digest|already exists'
echo "== skopeo reads the pushed image"
skopeo inspect --tls-verify=false "docker://$IMAGE"
echo "== umoci unpacks the OCI tarball"
mkdir "$work/layout" && tar -xf "$work/seed.tar" -C "$work/layout" && chown -R "$USER_NAME" "$work/layout"
as_user umoci unpack --rootless --image "$work/layout:latest" "$work/bundle" >/dev/null
cat "$work/bundle/rootfs/app/site/index.html"
echo "== done: $IMAGE, $work/seed.tar"
