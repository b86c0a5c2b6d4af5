package mountinfo

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(p, []byte(`83 81 0:49 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
58 82 0:52 / /proc/acpi ro,relatime - tmpfs tmpfs ro
59 82 0:49 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
90 81 0:60 / /srv/a\040b rw master:3 shared:7 - fuse.gpuwarm gpuwarm rw,user_id=0
`), 0o600)
	ms, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 4 {
		t.Fatalf("%d mounts", len(ms))
	}
	want := Mount{Dev: "0:49", Root: "/", Point: "/dev", Options: "rw,nosuid", FSType: "tmpfs", Source: "tmpfs", Super: "rw,size=65536k,mode=755"}
	if ms[0] != want || ms[0].ReadOnly() {
		t.Fatalf("/dev: %+v", ms[0])
	}
	if !ms[1].ReadOnly() || ms[2].Root != "/null" {
		t.Fatalf("parsed %+v", ms[1:3])
	}
	if m := ms[3]; m.Point != "/srv/a b" || m.FSType != "fuse.gpuwarm" || m.Super != "rw,user_id=0" {
		t.Fatalf("optional fields and an escaped space: %+v", m)
	}
	os.WriteFile(p, []byte("83 81 0:49 / /dev rw,nosuid tmpfs tmpfs\n"), 0o600)
	if _, err := Read(p); err == nil {
		t.Fatal("a line without its separator was accepted")
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/t\011x`: "/t\tx", `/plain`: "/plain", `/bad\09`: `/bad\09`, `/end\04`: `/end\04`} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
