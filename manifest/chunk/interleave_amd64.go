package chunk

// interleave writes lo[i], hi[i] pairs to out (len 2*len(lo)). On amd64
// SSE2's byte unpacks do 16 pairs an instruction pair: the Go version
// (interleaveGeneric) took 44% of a bf16 chunk's decode, holding it to 1.36
// GB/s per core on the 2-CPU VM.
func interleave(out, lo, hi []byte) {
	h := len(lo)
	hi = hi[:h] // bounds checked here: the assembly checks none
	out = out[:2*h]
	n := h &^ 15
	if n > 0 {
		interleaveSSE2(&out[0], &lo[0], &hi[0], n)
	}
	interleaveGeneric(out[2*n:], lo[n:], hi[n:])
}

// interleaveSSE2 interleaves n bytes (a multiple of 16) of lo and hi into
// 2n bytes at out.
//
//go:noescape
func interleaveSSE2(out, lo, hi *byte, n int)
