package report

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSpool(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		if err := Write(dir, Restore{Mode: "lazy", OK: true, Running: 0.1 * float64(i+1), At: int64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "00000000000000000009-1.json"), []byte("{not json"), 0o644)
	rs, bad, err := Collect(dir)
	if err != nil || bad != 1 || len(rs) != 3 || rs[0].Running != 0.1 || rs[2].Running < 0.29 {
		t.Fatalf("%+v bad %d %v", rs, bad, err)
	}
	if rs, _, _ := Collect(dir); len(rs) != 0 {
		t.Fatal("collected twice")
	}
}
