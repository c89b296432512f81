#!/usr/bin/env bash
# kiln's test command (the README's): prepares the machine with scripts/setup.sh, runs
# the unit tests, then the end-to-end tests as the unprivileged user against the local
# registry. Run as root on a Debian 12 machine: sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${KILN_CI_STATE:-/var/tmp/kiln-ci}
TEST_USER=${KILN_TEST_USER:-kiln-ci}

bash scripts/setup.sh

echo "[test] formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "[test] unit tests"
cargo test --workspace --quiet
# The micro-benchmarks once each, small (criterion's test mode): they build, and their
# checks (the context's digest, the layer written) hold.
cargo test --quiet --bench micro

echo "[test] end-to-end tests as $TEST_USER"
exe=$(cargo test --no-run --test e2e --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "e2e":
        print(m["executable"])')
cargo build --quiet --bin kiln
# The checkout may sit where the test user cannot read (e.g. under /root): copy the
# binaries somewhere it can.
bin="$STATE/bin"
mkdir -p "$bin"
install -m 0755 target/debug/kiln "$bin/kiln"
install -m 0755 "$exe" "$bin/e2e"
scratch=$(mktemp -d "/tmp/kiln-e2e-run.XXXXXX")
# Stores hold files owned by the test user's subordinate ids, which only root can
# remove from outside kiln's namespace.
# A small filesystem of the test user's, for the full-disk test (64 MiB of tmpfs).
small="$STATE/small-fs"
mkdir -p "$small"
mountpoint -q "$small" || mount -t tmpfs -o size=64m,mode=0755 tmpfs "$small"
chown "$TEST_USER" "$small"
trap 'rm -rf "$scratch"; umount "$small" 2>/dev/null || true' EXIT
chown "$TEST_USER" "$scratch"
# Twice: with the snapshotter kiln picks here (overlay), and with the native one that
# kiln falls back to where overlay cannot be mounted in a user namespace.
for snapshotter in auto native; do
  echo "[test] end-to-end tests with KILN_SNAPSHOTTER=$snapshotter"
  runuser -u "$TEST_USER" -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$(getent passwd "$TEST_USER" | cut -d: -f6)" TMPDIR="$scratch" \
    KILN_BIN="$bin/kiln" KILN_E2E_REGISTRY=127.0.0.1:5000 KILN_E2E_SMALL_FS="$small" KILN_E2E_MOTO="$STATE/moto/bin/moto_server" KILN_E2E_REGISTRY_LOG="$STATE/registry/log" KILN_E2E_APT_REPO="$STATE/apt-repo" KILN_E2E_WHEELS="$STATE/wheels" RUST_BACKTRACE=1 \
    KILN_SNAPSHOTTER=$snapshotter "$bin/e2e" --include-ignored --test-threads=2 --skip as_root::
done
# kiln run as root, as in a CI container: once, with the snapshotter kiln picks.
echo "[test] end-to-end tests of kiln run as root"
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR="$scratch" \
  KILN_BIN="$bin/kiln" KILN_E2E_REGISTRY=127.0.0.1:5000 KILN_E2E_APT_REPO="$STATE/apt-repo" RUST_BACKTRACE=1 \
  "$bin/e2e" --include-ignored --test-threads=2 as_root::

# The differential suite: each case of tests/conformance built by BuildKit's own
# buildkitd (rootful, from ../shared/buildkit) and by kiln as the test user; the
# images must be equal, or the difference listed with its reason.
bk_dir="$STATE/buildkit"
shared_bk="$PWD/../shared/buildkit"
echo "[test] conformance against BuildKit ($shared_bk)"
sock=$(bash "$shared_bk/up.sh" "$bk_dir" 5000 | tail -1)
trap 'rm -rf "$scratch"; umount "$small" 2>/dev/null || true; bash "$shared_bk/down.sh" "$bk_dir" >/dev/null 2>&1 || true' EXIT
python3 tests/conformance/run.py --addr "$sock" --buildctl "$bk_dir/bin/buildctl" \
  --kiln "$bin/kiln" --user "$TEST_USER"
