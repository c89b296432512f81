#!/usr/bin/env bash
# Two independent stages, each a ~2 s single-threaded CPU job in RUN, and a final stage
# that copies from both. Prints the wall time of each stage built alone (--target) and
# of the whole build; with two cores the whole build should take about as long as the
# slower stage, not their sum. Needs scripts/setup.sh's registry; runs kiln as the
# current user (run it as the unprivileged user, e.g. runuser -u kiln-ci).
#   KILN=path/to/kiln  ROUNDS=3  REGISTRY=127.0.0.1:5000
set -euo pipefail
KILN=${KILN:-$(dirname "$0")/../target/release/kiln}
ROUNDS=${ROUNDS:-3}
REGISTRY=${REGISTRY:-127.0.0.1:5000}
N=${N:-3600000}   # loop iterations per stage; about 2 s of one core with busybox awk here

work=$(mktemp -d)
cat >"$work/Dockerfile" <<DF
FROM $REGISTRY/library/busybox:latest AS a
RUN awk 'BEGIN{for(i=0;i<$N;i++)s+=i; print s}' > /a
FROM $REGISTRY/library/busybox:latest AS b
RUN awk 'BEGIN{for(i=0;i<$N;i++)s+=i*2; print s}' > /b
FROM $REGISTRY/library/busybox:latest
COPY --from=a /a /a
COPY --from=b /b /b
DF
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
run() { "$KILN" build --root "$work/store" --progress plain --no-cache "$@" "$work"; }
run --target a >/dev/null 2>&1 # warm: pull and unpack the base image once
ta=$(for _ in $(seq "$ROUNDS"); do secs run --target a; done | median)
tb=$(for _ in $(seq "$ROUNDS"); do secs run --target b; done | median)
tall=$(for _ in $(seq "$ROUNDS"); do secs run; done | median)
printf 'stage a alone: %.2fs  stage b alone: %.2fs  sum: %.2fs\n' "$ta" "$tb" "$(echo "$ta + $tb" | bc)"
printf 'whole build (a and b in parallel, then the final stage): %.2fs  (median of %s, %s cores)\n' "$tall" "$ROUNDS" "$(nproc)"
rm -rf "$work" 2>/dev/null || true
