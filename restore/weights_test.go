package restore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"golang.org/x/sys/unix"
)

func FuzzParseWeightsMeta(f *testing.F) {
	f.Add(`{"socket":"/run/w.sock","processes":1,"bytes":4,"refs":[{"name":"a","image":"` + zeroish + `","path":"m/f","source":"/m/by-id/x/m/f","offset":8,"length":4}]}`)
	f.Add(`{"processes":0}`)
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseWeightsMeta(s)
		if err != nil || m == nil {
			return
		}
		var sum int64
		for _, r := range m.Refs {
			if r.Length <= 0 || r.Offset < 0 {
				t.Fatalf("accepted %+v", r)
			}
			sum += r.Length
		}
		if sum != m.Bytes || m.Processes <= 0 {
			t.Fatalf("accepted %+v", m)
		}
	})
}

const zeroish = "1111111111111111111111111111111111111111111111111111111111111111"

// TestReadPathsChecksContainerSources: a source in the workload's own mount
// namespace is read at its own path only while it presents the referenced
// image bytes (the mount's file xattr, set here by hand on a scratch file);
// others are read at the host's by-id path.
func TestReadPathsChecksContainerSources(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "w.safetensors")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := digest.Of([]byte("image"))
	if err := unix.Setxattr(f, manifest.FileXattr, []byte(id.String()+"/m/w.safetensors"), 0); err != nil {
		t.Skipf("user xattrs unsupported on %s: %v", dir, err)
	}
	// This process shares the test's mount namespace, so the path stands.
	pid := os.Getpid()
	m := &WeightsMeta{Refs: []WeightRef{
		{Name: "a", Image: id, Path: "m/w.safetensors", Source: f, Local: true, Length: 1},
		{Name: "b", Image: id, Path: "m/v.safetensors", Source: "/mnt/by-id/x/m/v.safetensors", Length: 1},
	}}
	host := map[string]string{"/mnt/by-id/x/m/v.safetensors": "/here/by-id/x/m/v.safetensors"}
	got, err := readPaths(pid, m, host)
	if err != nil {
		t.Fatal(err)
	}
	if got[f] != f || got["/mnt/by-id/x/m/v.safetensors"] != "/here/by-id/x/m/v.safetensors" {
		t.Fatalf("read paths %v", got)
	}
	m.Refs[0].Path = "m/other.safetensors"
	if _, err := readPaths(pid, m, host); err == nil || !strings.Contains(err.Error(), "presents m/w.safetensors") {
		t.Fatalf("a source presenting other bytes: %v", err)
	}
	m.Refs[0].Path, m.Refs[0].Image = "m/w.safetensors", digest.Of([]byte("another image"))
	if _, err := readPaths(pid, m, host); err == nil {
		t.Fatal("a source of another image accepted")
	}
	m.Refs[0].Source = filepath.Join(dir, "gone")
	if _, err := readPaths(pid, m, host); err == nil || !strings.Contains(err.Error(), "not on a gpuwarm mount") {
		t.Fatalf("a source without the xattr: %v", err)
	}
}
