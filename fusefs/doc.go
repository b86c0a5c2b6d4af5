// Package fusefs presents images from a store as a read-only FUSE
// filesystem:
//
//	MOUNTPOINT/<tag>/...          the image a tag names (that tag re-read every TagTTL)
//	MOUNTPOINT/by-id/<image id>/  any image by its ID
//	MOUNTPOINT/.rootfs/<image id>/ the same, for containers' overlays: never passthrough (see byIDNode)
//
// Every file's contents are chunks fetched lazily through the worker's block
// cache, so only the bytes a program reads cross the network, once per
// worker. Images are immutable, which the mount exploits: kernel entry,
// attribute and negative-lookup timeouts are long, the page cache is kept
// across opens, reads are up to 1 MiB, and a file whose single chunk sits
// verified in the disk tier is served by FUSE passthrough where the kernel
// has it, bypassing this process entirely.
//
// Inode numbers are stable: they are derived from the image ID and the path
// (hard links share their target's), so they survive remounts.
//
// Capabilities are one-method interfaces from go-fuse's fs package, asserted
// below each type; syscall.Errno appears only at this boundary. A read whose
// chunk cannot be fetched or verified fails with EIO and is logged with the
// reason: wrong bytes are never returned.
package fusefs
