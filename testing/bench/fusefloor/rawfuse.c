// Minimal single-threaded FUSE server: one file "f" (4 KiB) at the root.
// Measures the kernel + VM floor of a FUSE OPEN/RELEASE round trip.
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
#include <linux/fuse.h>

static char buf[1 << 21];
static char data[4096];
static int fd;

static void reply(uint64_t unique, int err, const void *p, size_t n) {
	struct fuse_out_header h = {.len = sizeof h + n, .error = err, .unique = unique};
	struct iovec iov[2] = {{&h, sizeof h}, {(void *)p, n}};
	if (writev(fd, iov, n ? 2 : 1) < 0 && errno != ENOENT) perror("writev");
}

static void attr(struct fuse_attr *a, uint64_t ino) {
	memset(a, 0, sizeof *a);
	a->ino = ino;
	if (ino == 1) { a->mode = 040755; a->nlink = 2; }
	else { a->mode = 0100444; a->nlink = 1; a->size = sizeof data; a->blocks = 8; }
	a->blksize = 4096;
}

int main(int argc, char **argv) {
	memset(data, 'a', sizeof data);
	fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fd < 0) { perror("open /dev/fuse"); return 1; }
	char opts[128];
	snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd);
	if (mount("rawfuse", argv[1], "fuse.rawfuse", MS_NOSUID | MS_NODEV | MS_RDONLY, opts) < 0) { perror("mount"); return 1; }
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0) { if (errno == EINTR || errno == ENOENT) continue; if (errno == ENODEV) return 0; perror("read"); return 1; }
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
			if (in->nodeid != 1 || strcmp(arg, "f")) { reply(in->unique, -ENOENT, NULL, 0); break; }
			struct fuse_entry_out o = {0};
			o.nodeid = 2; o.entry_valid = 3600; o.attr_valid = 3600; attr(&o.attr, 2);
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
			if (off >= sizeof data) cnt = 0; else if (off + cnt > sizeof data) cnt = sizeof data - off;
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
			return 0;
		default:
			reply(in->unique, -ENOSYS, NULL, 0);
		}
	}
}
