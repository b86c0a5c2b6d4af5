//go:build !amd64

package chunk

// interleave writes lo[i], hi[i] pairs to out (len 2*len(lo)).
func interleave(out, lo, hi []byte) { interleaveGeneric(out, lo, hi) }
