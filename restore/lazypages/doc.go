// Package lazypages is gpuwarm's own lazy-pages daemon: it takes the
// userfaultfds that `criu restore --lazy-pages` hands over and fills the
// restored processes' memory from a snapshot's pages, on demand and ahead
// of demand.
//
// Why not CRIU's daemon: `criu lazy-pages` answers a page fault with one
// 4 KiB page and copies the rest in the background in address order, one
// request at a time, growing from 64 KiB to 4 MiB. A CUDA restore that
// reads gigabytes of checkpointed GPU memory then runs at page-fault speed
// (0.5 GB/s measured on an H100). This daemon instead:
//
//   - answers a fault with the whole unit around it (the part of a lazy
//     range that lies in one chunk of the pages file, at most 1 MiB), so a
//     sequential reader faults once per chunk, not once per page;
//   - fills everything else with several parallel large UFFDIO_COPYs,
//     starting the moment CRIU has handed over the descriptors, in the
//     order of a prefetch profile when one exists (the chunks the last
//     restores touched first), then in address order;
//   - reports the first touch of every unit, so a restore can record the
//     order its memory is used in (`gpuwarm restore --record-profile`).
//
// The handshake is CRIU's own (criu/uffd.c): the restore connects to
// lazy-pages.socket in its work directory and, per restored task, sends the
// task's PID as an int (negative for a zombie, which has no memory) and then
// the task's userfaultfd in an SCM_RIGHTS message; when the restore is done
// it sends the 32-bit RESTORE_FINISHED marker. Which ranges are lazy comes
// from the images: pagemap entries flagged PE_LAZY, cut at the VMA bounds of
// mm-PID.img because one UFFDIO_COPY must stay inside one VMA.
//
// The daemon follows the process's own changes to its memory through the
// non-cooperative userfaultfd events CRIU enables: fork (the child gets a
// descriptor of its own and the pages not yet copied), mremap (ranges move),
// munmap and MADV_DONTNEED (ranges are forgotten). A page that cannot be
// read or verified is never filled with anything else: the daemon fails,
// and the caller kills the tree, so no process runs with wrong memory.
package lazypages
