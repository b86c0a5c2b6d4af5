// Package restore snapshots running process trees into the store and
// restores them from the mount, driving CRIU through go-criu (swrk RPC).
//
// Snapshot: the tree (started by Run in fresh PID, IPC and UTS namespaces,
// so that every restore gets its own PID namespace and PIDs never clash) is
// dumped by CRIU. Its pages do not touch the disk: CRIU sends them to
// gpuwarm's page server (package pageserver), which cuts them into
// content-addressed chunks and uploads them as it receives them. The small
// CRIU images (registers, VMAs, files) are packed beside them, and the
// snapshot becomes an image of the store like any program tree. CRIU marks
// private anonymous memory lazy in the pagemaps as it dumps.
//
// Restore: CRIU reads the images as the mount presents them, so only what it
// reads is fetched, once per worker. With Lazy, CRIU skips the lazy pages and
// hands each task's userfaultfd to gpuwarm's own lazy-pages daemon (package
// lazypages), which answers faults a chunk at a time and fills the rest with
// parallel copies, in the order of the snapshot's prefetch profile when it
// has one; with Record it records that order. CRIU's own daemon, fed by
// gpuwarm's page server (PS_IOV_GET), remains as CRIULazyPages.
//
// Every failure path kills what it started: a failed restore leaves no
// half-restored process running.
package restore
