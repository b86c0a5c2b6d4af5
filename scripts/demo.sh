#!/usr/bin/env bash
# gpuwarm demo: pack a real program tree (python3 and its standard library)
# into the default file store, mount it, run the program from the mount
# cold, with a warm disk cache and hot, and print a timing table.
set -euo pipefail
cd "$(dirname "$0")/.."
GW=${GW:-$PWD/bin/gpuwarm}
STORE=${GPUWARM_STORE:-file:///var/lib/gpuwarm/store}
WORK=${DEMO_DIR:-/var/tmp/gpuwarm-demo}
MNT=$WORK/mnt
CACHE=$WORK/cache
PY=/usr/bin/python3

[ "$(id -u)" = 0 ] || { echo "demo: run as root (FUSE mount, dropping the page cache)"; exit 1; }
[ -x "$PY" ] || { echo "demo: $PY missing; run make setup"; exit 1; }
"$GW" umount "$MNT" 2>/dev/null || true
rm -rf "$WORK"; mkdir -p "$WORK/src/bin" "$WORK/src/lib" "$MNT"
stdlib=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
cp -a "$(readlink -f "$PY")" "$WORK/src/bin/python3"
cp -a "$stdlib" "$WORK/src/lib/"
rm -rf "$WORK/src/lib/$(basename "$stdlib")"/{test,idlelib,tkinter,turtledemo,site-packages,dist-packages}
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
# Precompile so every run reads .pyc files (as a deployed image would).
"$WORK/src/bin/python3" -I -m compileall -q "$WORK/src/lib" >/dev/null 2>&1 || true

echo "== pack into $STORE"
"$GW" pack "$WORK/src" --tag python-demo --store "$STORE"

PROG='import json, email.parser, http.client, asyncio, decimal, sqlite3, unittest, argparse, logging, xml.etree.ElementTree, csv, zipfile, tarfile, hashlib, ssl, urllib.request, multiprocessing, concurrent.futures, dataclasses, typing, pathlib, shutil, statistics, fractions, difflib, pickle, sysconfig; print("ok")'
now() { date +%s.%N; }
runpy() { # $1 = python binary
  local t0 t1; t0=$(now); "$1" -I -c "$PROG" >/dev/null; t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
startmount() {
  "$GW" mount "$MNT" --store "$STORE" --cache-dir "$CACHE" --log-level warn &
  MPID=$!
  for _ in $(seq 100); do mountpoint -q "$MNT" && return; sleep 0.05; done
  echo "demo: mount did not come up"; exit 1
}
stopmount() { "$GW" umount "$MNT" >/dev/null; wait "$MPID" || true; }
trap '"$GW" umount --lazy "$MNT" 2>/dev/null || true' EXIT

runpy "$WORK/src/bin/python3" >/dev/null
native_hot=$(runpy "$WORK/src/bin/python3")
drop; native_cold=$(runpy "$WORK/src/bin/python3")

startmount
drop; cold=$(runpy "$MNT/python-demo/bin/python3")
hot=$(runpy "$MNT/python-demo/bin/python3")
stats=$(cat "$MNT/.stats")
stopmount
startmount
drop; warm=$(runpy "$MNT/python-demo/bin/python3")
stopmount

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '\n== python3 importing 27 stdlib modules, run from the mount\n'
printf '%-36s %9s %s\n' "RUN" "SECONDS" "RATIO"
printf '%-36s %9.3f\n' "native, page cache hot" "$native_hot"
printf '%-36s %9.3f\n' "native, page cache dropped" "$native_cold"
printf '%-36s %9.3f %sx native cold\n' "gpuwarm cold (empty cache)" "$cold" "$(ratio "$cold" "$native_cold")"
printf '%-36s %9.3f %sx native cold\n' "gpuwarm warm (disk tier, new daemon)" "$warm" "$(ratio "$warm" "$native_cold")"
printf '%-36s %9.3f %sx native hot\n' "gpuwarm hot (same daemon)" "$hot" "$(ratio "$hot" "$native_hot")"
echo
echo "cache after the cold and hot runs: $(echo "$stats" | tr -d ' \n' | cut -c1-200)..."
