#!/bin/bash
# The floor under a FUSE open: open+close of one cached 4 KiB file through
# a single-threaded C FUSE server that answers OPEN and RELEASE at once
# (rawfuse.c), against the same through a gpuwarm mount (its default
# transport, and go-fuse's sleeping readers) and natively.
# Usage (as root): testing/bench/fusefloor/floor.sh [GPUWARM_BINARY]
# Needs gcc where it builds (or RAWFUSE/OCC set to built binaries).
set -e
here=$(cd "$(dirname "$0")" && pwd)
G=$(realpath "${1:-bin/gpuwarm}")
W=$(mktemp -d /var/tmp/fusefloor.XXXXXX)
cleanup() {
	umount "$W/m" 2>/dev/null || true
	"$G" umount "$W/g" 2>/dev/null || true
	"$G" umount "$W/z" 2>/dev/null || true
	sleep 0.3
	umount -l "$W/m" "$W/g" "$W/z" 2>/dev/null || true
	jobs -p | xargs -r kill 2>/dev/null || true
	cd /; rm -rf "$W"
}
trap cleanup EXIT
RAWFUSE=${RAWFUSE:-$W/rawfuse}; OCC=${OCC:-$W/occ}
[ -x "$RAWFUSE" ] || gcc -O2 -o "$RAWFUSE" "$here/rawfuse.c"
[ -x "$OCC" ] || gcc -O2 -x c -o "$OCC" - <<'C'
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
	int n = atoi(argv[2]);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < n; i++) { int fd = open(argv[1], O_RDONLY); if (fd < 0) { perror("open"); return 1; } close(fd); }
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.1f us per open+close\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n);
	return 0;
}
C
cd "$W"; mkdir -p src m g z
head -c 4096 /dev/urandom > src/f
"$G" pack src --tag t --store "file://$W/store" > /dev/null
"$RAWFUSE" "$W/m" & sleep 0.5
"$G" mount "$W/g" --store "file://$W/store" --cache-dir "$W/cache" > "$W/g.log" 2>&1 & sleep 1
"$G" mount "$W/z" --store "file://$W/store" --cache-dir "$W/cache-z" --fuse-spin=0 > "$W/z.log" 2>&1 & sleep 1
cat m/f g/t/f z/t/f > /dev/null; sleep 3; cat g/t/f z/t/f > /dev/null
for r in 1 2 3; do
	echo "native:  $("$OCC" src/f 3000)"
	echo "rawfuse: $("$OCC" m/f 3000)"
	echo "gpuwarm: $("$OCC" g/t/f 3000)"
	echo "gpuwarm-sleeping: $("$OCC" z/t/f 3000)"
done
