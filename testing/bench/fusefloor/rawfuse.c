// Minimal FUSE server: one file "f" (4 KiB, or SIZE bytes) at the root
// (and FILES more, "f0" to "f<FILES-1>", the same), answered at once by
// one thread reading /dev/fuse (or N): rawfuse MOUNTPOINT [N [SIZE [FILES]]].
// Measures the kernel + VM floor of a FUSE OPEN/RELEASE round trip.
// RAWFUSE_SPIN_US=N: the threads poll /dev/fuse (non-blocking) for N µs
// after each request before sleeping in poll(2): what a server that keeps
// a reader hot saves (16 cores: open+close 14-18 -> 10-12 µs).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <sys/mount.h>
#include <sys/uio.h>
#include <pthread.h>
#include <poll.h>
#include <time.h>
#include <linux/fuse.h>

static char *data;
static size_t size = 4096;
static unsigned long files;
static int fd;
static long spin_us; // RAWFUSE_SPIN_US: poll /dev/fuse this long after a request before sleeping

static long now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000L + t.tv_nsec / 1000; }

static void reply(uint64_t unique, int err, const void *p, size_t n) {
	struct fuse_out_header h = {.len = sizeof h + n, .error = err, .unique = unique};
	struct iovec iov[2] = {{&h, sizeof h}, {(void *)p, n}};
	if (writev(fd, iov, n ? 2 : 1) < 0 && errno != ENOENT) perror("writev");
}

static void attr(struct fuse_attr *a, uint64_t ino) {
	memset(a, 0, sizeof *a);
	a->ino = ino;
	if (ino == 1) { a->mode = 040755; a->nlink = 2; }
	else { a->mode = 0100444; a->nlink = 1; a->size = size; a->blocks = (size + 511) / 512; }
	a->blksize = 4096;
}

static void *serve(void *unused) {
	char *buf = malloc(1 << 21);
	long last = now_us();
	for (;;) {
		ssize_t n = read(fd, buf, 1 << 21);
		if (n < 0 && errno == EAGAIN) {
			if (now_us() - last > spin_us) {
				struct pollfd p = {.fd = fd, .events = POLLIN};
				poll(&p, 1, -1);
				last = now_us();
			}
			continue;
		}
		last = now_us();
		if (n < 0) { if (errno == EINTR || errno == ENOENT) continue; if (errno == ENODEV) exit(0); perror("read"); exit(1); }
		struct fuse_in_header *in = (void *)buf;
		void *arg = buf + sizeof *in;
		switch (in->opcode) {
		case FUSE_INIT: {
			struct fuse_init_in *ii = arg;
			struct fuse_init_out o = {0};
			o.major = 7; o.minor = ii->minor < 31 ? ii->minor : 31;
			o.max_readahead = 1 << 20; o.flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES;
			o.max_background = 64; o.congestion_threshold = 48; o.max_write = 1 << 20; o.max_pages = 256; o.time_gran = 1;
			reply(in->unique, 0, &o, sizeof o);
			break;
		}
		case FUSE_LOOKUP: {
			const char *name = arg;
			char *end;
			uint64_t ino = 0;
			if (in->nodeid == 1 && !strcmp(name, "f")) ino = 2;
			else if (in->nodeid == 1 && name[0] == 'f' && name[1]) {
				unsigned long i = strtoul(name + 1, &end, 10);
				if (!*end && i < files) ino = 3 + i;
			}
			if (!ino) { reply(in->unique, -ENOENT, NULL, 0); break; }
			struct fuse_entry_out o = {0};
			o.nodeid = ino; o.entry_valid = 3600; o.attr_valid = 3600; attr(&o.attr, ino);
			reply(in->unique, 0, &o, sizeof o);
			break;
		}
		case FUSE_GETATTR: {
			struct fuse_attr_out o = {0};
			o.attr_valid = 3600; attr(&o.attr, in->nodeid);
			reply(in->unique, 0, &o, sizeof o);
			break;
		}
		case FUSE_OPEN: case FUSE_OPENDIR: {
			struct fuse_open_out o = {0};
			o.fh = 1; o.open_flags = FOPEN_KEEP_CACHE;
			reply(in->unique, 0, &o, sizeof o);
			break;
		}
		case FUSE_READ: {
			struct fuse_read_in *r = arg;
			size_t off = r->offset, cnt = r->size;
			if (off >= size) cnt = 0; else if (off + cnt > size) cnt = size - off;
			reply(in->unique, 0, data + off, cnt);
			break;
		}
		case FUSE_RELEASE: case FUSE_RELEASEDIR:
			reply(in->unique, 0, NULL, 0);
			break;
		case FUSE_FORGET: case FUSE_BATCH_FORGET:
			break;
		case FUSE_DESTROY:
			reply(in->unique, 0, NULL, 0);
			exit(0);
		default:
			reply(in->unique, -ENOSYS, NULL, 0);
		}
	}
}

int main(int argc, char **argv) {
	if (argc > 3) size = strtoul(argv[3], NULL, 0);
	if (argc > 4) files = strtoul(argv[4], NULL, 0);
	data = malloc(size);
	memset(data, 'a', size);
	fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fd < 0) { perror("open /dev/fuse"); return 1; }
	char opts[128];
	snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd);
	if (mount("rawfuse", argv[1], "fuse.rawfuse", MS_NOSUID | MS_NODEV | MS_RDONLY, opts) < 0) { perror("mount"); return 1; }
	int threads = argc > 2 ? atoi(argv[2]) : 1;
	if (getenv("RAWFUSE_SPIN_US")) {
		spin_us = atol(getenv("RAWFUSE_SPIN_US"));
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	}
	for (int i = 1; i < threads; i++) {
		pthread_t t;
		pthread_create(&t, NULL, serve, NULL);
	}
	serve(NULL);
	return 0;
}
