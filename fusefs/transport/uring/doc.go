// Package uring serves a FUSE connection's requests through io_uring
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
// INTERRUPT and notifications). Best, it is the /dev/fuse server's own
// protocol server (Options.Primed): an INTERRUPT, which comes through
// /dev/fuse, then finds the request it is for when that request is being
// answered here, and cancels it. With a protocol server of its own, an
// interrupt for a request answered here finds nothing and is answered
// EAGAIN, which has the kernel send it again until the request is answered.
//
// A queue's thread answers on itself what the filesystem can answer
// without waiting: a request answered there holds up the requests made on
// its CPU behind it (a process exiting while its readahead waits on the
// network: its FLUSH would wait as long). So the filesystem, asked on a
// queue's thread (OnQueueThread), answers WouldWait instead of waiting (a
// read of bytes not in memory, an open that must hash a file first, a
// lookup that must ask a store); the queue then hands the request to a
// goroutine, whose reply goes back to the queue's thread through an
// eventfd the ring reads. As a backstop for waits the filesystem did not
// foresee, once a READ, LOOKUP, READDIR... took longer than a millisecond
// the queue hands those to goroutines for the next 100 ms. Answering on the
// queue's thread matters for reads too: handing a read served from memory
// to a goroutine and back costs two more wakeups.
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
// from the daemon's memory ran 18-23% slower on a 16-core VM (and 15-30%
// faster on a 2-CPU one, where answering on the reader's own CPU matters
// more). Handing reads of 256 KiB and more to goroutines, to copy beside
// the reader's CPU, did not win it back (0.85-0.86x): the kernel's copy
// out of the ring still runs on the ring's thread. Hot reads (the kernel's
// page cache, one OPEN per file) came out even with /dev/fuse side by side
// on that VM (medians 0.87-0.90x native against 0.88-0.92x).
package uring
