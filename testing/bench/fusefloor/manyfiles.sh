#!/bin/bash
# What a program pays per file it opens, reads and closes through FUSE,
# beyond the read: open+close, plus what a read right after an open costs
# more than one of a file opened earlier ("extra"). 200 files of 768 KiB,
# natively, through the C server of floor.sh with 1, 2, 4 and 8 threads
# waiting on /dev/fuse, and through a gpuwarm mount. The kernel wakes the
# reader that has waited longest; on a VM a longer-idle vCPU wakes slower,
# which is what the thread counts show.
# Usage (as root): testing/bench/fusefloor/manyfiles.sh [GPUWARM_BINARY]
set -e
here=$(cd "$(dirname "$0")" && pwd)
G=$(realpath "${1:-bin/gpuwarm}")
W=$(mktemp -d /var/tmp/manyfiles.XXXXXX)
N=200; SZ=$((768 * 1024))
cleanup() {
	for t in 1 2 4 8; do umount "$W/c$t" 2>/dev/null || umount -l "$W/c$t" 2>/dev/null || true; done
	"$G" umount "$W/g" 2>/dev/null || true
	sleep 0.3
	jobs -p | xargs -r kill 2>/dev/null || true
	cd /; rm -rf "$W"
}
trap cleanup EXIT
gcc -O2 -o "$W/rawfuse" "$here/rawfuse.c" -lpthread
gcc -O2 -x c -o "$W/orm" - <<'C'
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdlib.h>
#include <time.h>
static char buf[1 << 20];
static int fds[100000];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static int op(const char *dir, int i) {
	char p[4096];
	snprintf(p, sizeof p, "%s/f%d", dir, i);
	int fd = open(p, O_RDONLY);
	if (fd < 0) { perror(p); exit(1); }
	return fd;
}
int main(int argc, char **argv) {
	int n = atoi(argv[2]);
	double best[3] = {1e18, 1e18, 1e18};
	for (int rep = 0; rep < 7; rep++) {
		double a = now();
		for (int i = 0; i < n; i++) { int fd = op(argv[1], i); while (read(fd, buf, sizeof buf) > 0); close(fd); }
		double b = now();
		for (int i = 0; i < n; i++) close(op(argv[1], i));
		double c = now();
		for (int i = 0; i < n; i++) fds[i] = op(argv[1], i);
		double d = now();
		for (int i = 0; i < n; i++) while (read(fds[i], buf, sizeof buf) > 0);
		double e = now();
		for (int i = 0; i < n; i++) close(fds[i]);
		double v[3] = {(b - a) / n, (c - b) / n, (e - d) / n};
		for (int k = 0; k < 3; k++) if (v[k] < best[k]) best[k] = v[k];
	}
	printf("per file, best of 7: open+read+close %.1f us = read %.1f + open+close %.1f + extra %.1f\n",
		best[0], best[2], best[1], best[0] - best[1] - best[2]);
	return 0;
}
C
mkdir -p "$W/src/t" "$W/g"
for i in $(seq 0 $((N - 1))); do head -c $SZ /dev/urandom > "$W/src/t/f$i"; done
for t in 1 2 4 8; do mkdir -p "$W/c$t"; "$W/rawfuse" "$W/c$t" $t $SZ $N & done
"$G" pack "$W/src/t" --tag t --store "file://$W/store" > /dev/null
"$G" mount "$W/g" --store "file://$W/store" --cache-dir "$W/cache" > "$W/g.log" 2>&1 &
sleep 1
for d in "$W/src/t" "$W/c1" "$W/c2" "$W/c4" "$W/c8" "$W/g/t"; do
	for i in $(seq 0 $((N - 1))); do cat "$d/f$i"; done > /dev/null
done
sleep 3 # the daemon's background work (disk tier) done
for i in $(seq 0 $((N - 1))); do cat "$W/g/t/f$i"; done > /dev/null
for r in 1 2 3; do
	echo "native:               $("$W/orm" "$W/src/t" $N)"
	for t in 1 2 4 8; do echo "C server, $t thread(s): $("$W/orm" "$W/c$t" $N)"; done
	echo "gpuwarm:              $("$W/orm" "$W/g/t" $N)"
done
