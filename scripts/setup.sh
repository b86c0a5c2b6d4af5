#!/usr/bin/env bash
# Installs everything gpuwarm and its tests need on a Debian 12 machine:
# fuse3, python3 (test workloads), a CRIU >= 4 that works on recent kernels,
# runc (containers), squashfuse (a benchmark baseline), the versitygw S3 server, a registry (docker-registry)
# and the test images, and the Go modules. Idempotent and quick when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v python3 >/dev/null || need+=(python3)
[ -e /usr/bin/python3.11 ] || [ -e /usr/bin/python3 ] || need+=(python3)
command -v runc >/dev/null || need+=(runc)
# CRIU dumps a container with a network namespace of its own only with
# iptables-restore (it locks the network during the dump).
command -v iptables-restore >/dev/null || need+=(iptables)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v debootstrap >/dev/null || need+=(debootstrap)
# The mount benchmark's baseline: squashfuse over a zstd squashfs image.
command -v squashfuse_ll >/dev/null || need+=(squashfuse)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
# ISA-L's inflate unpacks gzip image layers at 2.5x the Go inflate's speed
# (internal/inflate): its header to build with, its library to run with.
[ -e /usr/include/isa-l/igzip_lib.h ] || need+=(libisal-dev)
# promtool checks the metrics the mount exports and the dashboard's queries.
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  if [ "$(id -u)" != 0 ]; then echo "setup: run as root (apt-get install ${need[*]})" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: load the fuse kernel module" >&2; exit 1; }

bash scripts/install-criu.sh
bash scripts/install-versitygw.sh
bash scripts/build-test-images.sh
go mod download
(cd deploy/kubernetes/validate && go mod download)
# Debian's prometheus package starts a server where it can; the tests
# need only promtool.
pkill -x prometheus 2>/dev/null || true
echo "setup: ok"
