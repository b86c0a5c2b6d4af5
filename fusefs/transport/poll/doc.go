// Package poll serves a FUSE connection's /dev/fuse with one thread
// that reads requests without sleeping while they come close together,
// in place of go-fuse's readers, which sleep in read(2).
//
// Why: through /dev/fuse a request wakes a server thread asleep in read(2),
// often on another CPU, and the caller sleeps until the answer wakes it
// again. On a VM, waking an idle vCPU costs more than answering most
// requests: an open+close of a file in the page cache took 1.3 µs natively
// and 16.9-23.4 µs through go-fuse's readers on a 16-core VM, 10.5-15.4 µs
// with this package (12.3-17.7 µs through a C server that answers at once
// but sleeps). A program starting up opens hundreds of files in a row, one
// round trip each, with little else between them when its files are in
// the page cache: a polling thread is awake for the next one.
//
// How long it polls adapts, as the kernel's guest halt-polling does: after
// a request it reads on for the window (Options.Spin at most) before it
// sleeps in poll(2); a request that wakes it soon after the last one (within
// Options.Spin) widens the window again, one that comes later narrows it,
// down to none. A mount asked now and then costs no CPU; one answering a
// burst keeps one core busy through it.
//
// The thread answers in turn, on itself, what the filesystem answers from
// memory. It is marked as a queue's thread (uring.EnterQueueThread), so
// the filesystem answers uring.WouldWait for what would wait (a fetch, a
// hash of a file, a lock held long) and a goroutine asks again while the
// thread goes on with the next request; so do reads of 256 KiB and more
// (their copies then run in parallel) and, for 100 ms after one of them was
// slow, the requests the filesystem does not promise to answer from memory
// (as transport/uring's queues do). A watchdog logs the thread held up by one
// request for over a second. The kernel bounds what goroutines answer at
// once: the mount's background requests (readahead) and the threads of the
// processes waiting on it.
//
// Requests go to a fuse.ProtocolServer: best the go-fuse Server's own, so
// that an INTERRUPT finds the request it is for. When the connection ends
// (ENODEV), Stopped is closed; the caller then runs the go-fuse Server's
// Serve, which sees the same, cancels the requests goroutines still answer
// and calls the filesystem's OnUnmount, as when it served all along; Wait
// returns once those goroutines are done.
package poll
