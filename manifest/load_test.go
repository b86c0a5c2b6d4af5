package manifest

import (
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

func FuzzParseFileXattr(f *testing.F) {
	f.Add(digest.Of([]byte("x")).String() + "/m/w.safetensors")
	f.Add("x/y")
	f.Fuzz(func(t *testing.T, v string) {
		id, p, err := ParseFileXattr(v)
		if err != nil {
			return
		}
		if ValidPath(p) != nil || id.String()+"/"+p != v {
			t.Fatalf("accepted %q as %v %q", v, id, p)
		}
	})
}
