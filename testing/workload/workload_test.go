package workload

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func TestSampleReadsOneBlockInK(t *testing.T) {
	s := Build(Config{MB: 6, Seed: 3})
	// Blocks 0 and 3 (6 blocks, k=3), in the order the stride (5: 6*0.62
	// is 3, odd, shares 3 with 6) visits them: 0, 5, 4, 3, ... -> 0, 3.
	h := sha256.New()
	h.Write(s.blocks[0])
	h.Write(s.blocks[3])
	if got, want := s.Sample(3), hex.EncodeToString(h.Sum(nil)); got != want {
		t.Fatalf("Sample(3) = %s, want %s", got, want)
	}
	if s.Sample(3) != Build(Config{MB: 6, Seed: 3}).Sample(3) {
		t.Fatal("Sample is not deterministic")
	}
	if s.Sample(1) == s.Checksum() {
		t.Fatal("Sample(1) visits the blocks in address order; it should scatter")
	}
	if r, _ := s.Handle("sample 3"); r != s.Sample(3) {
		t.Fatalf("Handle(sample 3) = %q", r)
	}
	for _, bad := range []string{"sample 0", "sample x", "sample -2"} {
		if r, _ := s.Handle(bad); !strings.HasPrefix(r, "error: ") {
			t.Errorf("Handle(%q) = %q, want an error", bad, r)
		}
	}
}
