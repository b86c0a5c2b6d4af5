// Package restore snapshots running process trees into the store and
// restores them from the mount, driving CRIU through go-criu (swrk RPC).
//
// Snapshot: the tree (started by Run in fresh PID, IPC and UTS namespaces,
// so that every restore gets its own PID namespace and PIDs never clash) is
// dumped by CRIU. Its pages do not touch the disk: CRIU sends them to
// gpuwarm's page server (package pageserver), which cuts them into
// content-addressed chunks and uploads them as it receives them. The small
// CRIU images (registers, VMAs, files) are packed beside them, and the
// snapshot becomes an image of the store like any program tree: the root
// holds the images for an eager restore, lazy/ the same images with the
// pagemaps marking anonymous memory lazy.
//
// Restore: CRIU reads the images as the mount presents them, so only what it
// reads is fetched, once per worker. With Lazy, the process runs before its
// memory is loaded: CRIU's lazy-pages daemon takes the userfaultfds and asks
// gpuwarm's page server for pages, which it serves from the block cache.
//
// Every failure path kills what it started: a failed restore leaves no
// half-restored process running.
package restore
