package cache

import (
	"context"
	"testing"
)

func BenchmarkColdGet(b *testing.B) {
	st, _, ids := fixture(&testing.T{}, 64, 1<<20)
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%64 == 0 {
			b.StopTimer()
			c, _ := Open(st, Config{Dir: b.TempDir(), MemBytes: 1 << 30, DiskBytes: 1 << 30})
			defer c.Close()
			b.StartTimer()
			for _, id := range ids {
				if _, err := c.Get(context.Background(), id, 1<<20); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}
