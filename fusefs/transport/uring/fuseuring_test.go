package uring

import "testing"

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string]int{"0-15\n": 16, "0": 1, "0-3,8-11": 12, "0,2,5": 6} {
		if n, err := parseCPUList(in); err != nil || n != want {
			t.Errorf("parseCPUList(%q) = %d, %v; want %d", in, n, err, want)
		}
	}
	for _, in := range []string{"", "a", "3-1", "-1", "0-", "0-99999999"} {
		if n, err := parseCPUList(in); err == nil {
			t.Errorf("parseCPUList(%q) = %d, want an error", in, n)
		}
	}
}

// The CPU list comes from the kernel; whatever it says, no panic, and a
// count only for a list that parses.
func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"0-15", "0,2-3", "", "7-3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := parseCPUList(s); err == nil && (n <= 0 || n > 1<<16) {
			t.Fatalf("parseCPUList(%q) = %d", s, n)
		}
	})
}
