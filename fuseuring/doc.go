// Package fuseuring serves a FUSE connection's requests through io_uring
// (FUSE over io_uring, Linux 6.14 and later) instead of read(2) and
// write(2) on /dev/fuse.
//
// Why: through /dev/fuse, a request wakes a server thread that has been
// sleeping, often on another CPU, while the process that made the request
// sleeps on its own; on a VM each such wakeup of an idle vCPU costs more
// than answering the request (an open+close of a file in the page cache:
// about 1.5 µs natively, 15-20 µs through a FUSE server in C, 20-25 through
// go-fuse, on a 16-core VM). Over io_uring the kernel keeps one queue per
// CPU and puts a request on the queue of the CPU it was made on. Here each
// queue is served by an OS thread pinned to that CPU, blocked in
// io_uring_enter: the request wakes it on the CPU the process is leaving,
// and its answer (committed in the same system call that fetches the next
// request) wakes the process there again.
//
// The protocol is go-fuse's: requests are handed, as the bytes the kernel
// put in the ring entry, to a fuse.ProtocolServer over the same
// RawFileSystem the /dev/fuse server uses (it still handles INIT, FORGET,
// INTERRUPT and notifications). Interrupts for requests answered here find
// no request on the /dev/fuse side and are answered EAGAIN, which has the
// kernel send them again until the request is answered.
//
// A queue's thread answers on itself the requests a filesystem answers
// from memory (GETATTR, OPEN, RELEASE, xattrs, READLINK, STATFS, OPENDIR,
// RELEASEDIR, ACCESS, FLUSH), and the others (READ, LOOKUP, READDIR...)
// too, until one of them takes longer than a millisecond: for the next
// 100 ms that queue then hands them to goroutines (a read waiting on the
// network must not hold up the requests made on the same CPU behind it),
// whose replies go back to the queue's thread through an eventfd the ring
// reads. Answering on the queue's thread matters for reads too: handing a
// read served from memory to a goroutine and back costs two more wakeups.
// A filesystem whose OPEN may be slow delays, by as much, the other
// requests made on the same CPU meanwhile.
//
// The kernel switches a connection to the rings once every CPU's queue has
// an entry registered, and ends them (completions with ENOTCONN) when the
// connection ends; the queues then stop. Between INIT and that switch it
// holds every request; if the rings cannot be set up, Serve makes one
// registration fail on purpose, which has the kernel turn io_uring off for
// the connection and release them through /dev/fuse.
//
// Each entry's payload buffer is as large as the largest request (1 MiB),
// so a reply of a read is copied once more than through /dev/fuse (there,
// the kernel copies from the reply's own memory): sequential reads served
// from the daemon's memory ran 20-25% slower on a 16-core VM (and 15-30%
// faster on a 2-CPU one, where answering on the reader's own CPU matters
// more).
package fuseuring
