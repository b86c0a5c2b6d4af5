#!/usr/bin/env bash
# Builds the root filesystem of the tests' real distribution image, Debian 12
# (minbase) with python3 and its standard library, as a tar under
# /var/lib/gpuwarm/test-images, once: later runs find it there. The e2e tests push it to their registry.
set -euo pipefail
out=${GPUWARM_TEST_IMAGES:-/var/lib/gpuwarm/test-images}
tarball=$out/debian12-python3-stdlib.tar
[ -s "$tarball" ] && exit 0
mkdir -p "$out"
work=$(mktemp -d /var/tmp/gpuwarm-debootstrap.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "setup: building the Debian 12 + python3 test image (debootstrap, once)"
debootstrap --variant=minbase --include=python3 bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/log" 2>&1 ||
  { tail -20 "$work/log" >&2; echo "setup: debootstrap failed (log above)" >&2; exit 1; }
# No caches or logs: they change from build to build.
rm -rf "$work/rootfs"/var/cache/apt/* "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/log/* "$work/rootfs"/dev/*
tar --numeric-owner -C "$work/rootfs" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "setup: test image $tarball ($(du -h "$tarball" | cut -f1))"
