// Package gpu is gpuwarm's GPU layer: an NVML inventory (go-nvml) and the
// CUDA driver's checkpoint API, both loaded at run time, so gpuwarm builds
// without a CUDA toolkit and runs on machines without a GPU (where every
// entry point says "no NVIDIA driver" instead of failing to start).
//
// Snapshot of a CUDA process tree: every process holding CUDA state is
// locked (waiting for in-flight work, with a timeout) and checkpointed,
// which moves its GPU memory into its host memory and releases its device
// handles, so that CRIU can dump it like any process. Restore reverses it
// after CRIU: cuCheckpointProcessRestore puts the memory back on the GPU,
// then the process is unlocked.
package gpu
