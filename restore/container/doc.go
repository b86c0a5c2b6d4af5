// Package container runs workloads as OCI containers through runc, and
// snapshots and restores them with gpuwarm's page server and lazy-pages
// daemon (package restore does the CRIU-facing work; this package is what
// is particular to containers).
//
// A container's root filesystem is an image on the gpuwarm mount, read
// only, under an overlay whose writable layer is on local disk. The mount
// path used is MOUNTPOINT/by-id/IMAGE, not the tag, so that a tag moving
// later changes nothing under a running container or its snapshots.
//
// runc, not gpuwarm, knows how to put a process into namespaces, cgroups,
// mounts and device rules, and how to checkpoint and restore all of that
// with CRIU (external bind mounts, masked paths, the network namespace,
// cgroup roots). gpuwarm writes the runtime config (config.json, with
// runtime-spec's types) and asks runc: `runc checkpoint --page-server`
// sends the pages to gpuwarm's page server, which stores them as chunks;
// `runc restore --lazy-pages` leaves anonymous memory to gpuwarm's daemon,
// which listens in the work directory runc gives CRIU. A CRIU configuration
// file passed through runc's org.criu.config annotation adds leave-stopped,
// so that a restored tree runs no instruction before gpuwarm has anchored
// it (a lazy restore) or filled it (a prefilled one).
//
// Each restore is a new container: its own name, cgroup, overlay and PID
// namespace, so any number of restores of one snapshot run side by side.
// The writable layer travels with the snapshot as rootfs-diff.tar, an OCI
// layer (whiteouts as .wh. entries), the form podman's checkpoint export
// uses; ApplyDiff treats it as outside bytes (a snapshot in a shared store
// may be crafted). The container's standard output and error are pipes:
// runc hands a restored container new pipes for the snapshot's, where a
// host file path would not exist inside the container.
//
// GPUs are made visible as the NVIDIA Container Toolkit's CDI specs do:
// package gpu describes this worker's device nodes and driver libraries as
// a CDI spec, ApplyCDI applies it to the config, and a restore strips the
// snapshot's and applies the restoring worker's.
package container
