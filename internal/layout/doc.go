// Package layout holds no code: its documentation describes how gpuwarm's
// packages are arranged, and its test keeps the import graph that way.
//
// The tree shows the three sides of the system and their layers:
//
//	manifest/            the image format: entries, chunk references, Load
//	  digest/            content identity (SHA-256), imported by everything
//	  chunk/             a chunk's stored form: codec byte, zstd, verification
//	  store/             the remote tier's contract: chunks, manifests, tags, locks
//	    filestore/ s3store/ simstore/ storeopen/ storetest/
//	  pack/              a directory tree into an image (store side, writing)
//	  gc/                what no tag needs, deleted
//	fusefs/              the mount: images from a store as a read-only filesystem
//	  cache/             the worker-local block cache (memory + disk) under it
//	  transport/poll/    /dev/fuse read by one polling thread
//	  transport/uring/   FUSE requests through io_uring queues
//	prefetch/            profiles: the recorder, the replay, their records
//	restore/             run, snapshot, restore: CRIU driven through go-criu
//	  pageserver/        CRIU's page-server protocol, pages into the store
//	  lazypages/         gpuwarm's lazy-pages daemon (userfaultfd)
//	  container/         containers: runc, OCI configs, overlays, writable layers
//	  weights/           the weights protocol and its PyTorch library (gpuwarm_weights.py)
//	gpu/                 NVML and the CUDA checkpoint driver API, nothing else
//	internal/            small helpers with no gpuwarm imports of their own
//	cmd/gpuwarm/         the CLI: one file per command
//	testing/             end-to-end tests, benchmarks, GPU checks, workloads,
//	                     the S3 server and registry the tests start (procserver:
//	                     what running either as a child process takes)
//
// Imports only point down or sideways into lower layers: the store side
// (manifest/...) knows nothing of mounts, prefetching or restores; the mount
// (fusefs/...) knows nothing of prefetch or restore, which observe it through
// manifest.Observer; prefetch sits on the block cache; restore sits on all of
// them; gpu and internal/... import no gpuwarm package except internal ones,
// so the GPU layer can be read, tested and reused alone. Only cmd and testing
// put the pieces together. The test in this package fails on an import that
// breaks these rules, naming it.
package layout
