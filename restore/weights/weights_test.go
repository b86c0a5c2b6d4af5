package weights

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseReply(t *testing.T) {
	good := `{"ok":true,"tensors":[{"name":"a","file":"/m/by-id/x/f","offset":8,"length":4}],"bytes":4}`
	if _, err := ParseReply([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		`{"ok":true,"tensors":[{"name":"a","file":"rel/f","offset":8,"length":4}],"bytes":4}`,
		`{"ok":true,"tensors":[{"name":"a","file":"/m/../f","offset":8,"length":4}],"bytes":4}`,
		`{"ok":true,"tensors":[{"name":"a","file":"/m/f","offset":-1,"length":4}],"bytes":4}`,
		`{"ok":true,"tensors":[{"name":"a","file":"/m/f","offset":0,"length":0}],"bytes":0}`,
		`{"ok":true,"tensors":[{"name":"a","file":"/m/f","offset":0,"length":4}],"bytes":5}`,
		`{"ok":true,"bytes":-1}`,
		`not json`,
	} {
		if _, err := ParseReply([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	r, err := ParseReply([]byte(`{"ok":false}`))
	if err != nil || r.OK || r.Error == "" {
		t.Fatalf("a refusal without a reason: %+v %v", r, err)
	}
}

func TestParseHello(t *testing.T) {
	if _, err := ParseHello([]byte(`{"version":1,"pid":3,"state":"resident","files":["/m/t/f"],"bytes":9}`)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		`{"version":2,"pid":3,"state":"resident"}`,
		`{"version":1,"pid":3,"state":"sleeping"}`,
		`{"version":1,"pid":3,"state":"resident","files":["f"]}`,
		`{"version":1,"pid":3,"state":"resident","bytes":-4}`,
	} {
		if _, err := ParseHello([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// TestSession: a peer outside the wanted set is turned away; a wanted one
// gets a release and a reload; a release naming a file not offered fails.
func TestSession(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	srv, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		c, err := net.Dial("unix", path)
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"version":1,"pid":1,"state":"resident","files":["/m/t/f"],"bytes":4}` + "\n"))
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		var req request
		json.Unmarshal(buf[:n], &req)
		src := req.Files["/m/t/f"]
		c.Write([]byte(`{"ok":true,"tensors":[{"name":"a","file":"` + src + `","offset":8,"length":4}],"bytes":4}` + "\n"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := srv.Accept(ctx, func(pid int) bool { return pid == os.Getpid() })
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Release(ctx, map[string]string{"/m/t/f": "/m/by-id/x/f"})
	if err != nil || len(r.Tensors) != 1 || r.Tensors[0].File != "/m/by-id/x/f" {
		t.Fatalf("%+v %v", r, err)
	}
	p.Close()

	// Nobody wanted: Accept waits for its context.
	go func() {
		if c, err := net.Dial("unix", path); err == nil {
			defer c.Close()
			c.Write([]byte(`{"version":1,"pid":1,"state":"resident"}` + "\n"))
			time.Sleep(time.Second)
		}
	}()
	short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if _, err := srv.Accept(short, func(int) bool { return false }); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("an unwanted peer was accepted: %v", err)
	}
	srv.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the socket outlives Close: %v", err)
	}
	// A regular file at the path is never replaced.
	os.WriteFile(path, nil, 0o644)
	if _, err := Listen(path); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	// A socket something listens on is never replaced.
	live := filepath.Join(t.TempDir(), "live.sock")
	l, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen(live); err == nil || !strings.Contains(err.Error(), "listens on") {
		t.Fatalf("Listen over a live socket: %v", err)
	}
	// ListenIn makes the socket in the directory it is handed, by name.
	d := t.TempDir()
	df, err := os.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	srv2, err := ListenIn(df, "w.sock", "/run/gpuwarm/w.sock")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(d, "w.sock")); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("ListenIn made no socket in its directory: %v", err)
	}
	srv2.Close()
	if _, err := os.Lstat(filepath.Join(d, "w.sock")); !os.IsNotExist(err) {
		t.Fatalf("ListenIn's socket outlives Close: %v", err)
	}
	dir2, _ := os.Open(d)
	if _, err := ListenIn(dir2, "../x.sock", "x"); err == nil {
		t.Fatal("ListenIn took a name with a slash")
	}
	// A path too long for a socket address says so.
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 120), "w.sock")
	if _, err := Listen(long); err == nil || !strings.Contains(err.Error(), "shorter path") {
		t.Fatalf("a %d-byte socket path: %v", len(long), err)
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add([]byte(`{"ok":true,"tensors":[{"name":"a","file":"/m/by-id/x/f","offset":8,"length":4}],"bytes":4}`))
	f.Add([]byte(`{"ok":false,"error":"x"}`))
	f.Add([]byte(`{"version":1,"pid":3,"state":"resident","files":["/m/t/f"],"bytes":9}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := ParseReply(b); err == nil && r.OK {
			var sum int64
			for _, x := range r.Tensors {
				if x.Length <= 0 || x.Offset < 0 || checkPath(x.File) != nil {
					t.Fatalf("accepted %+v", x)
				}
				sum += x.Length
			}
			if len(r.Tensors) > 0 && sum != r.Bytes {
				t.Fatal("sum")
			}
		}
		if h, err := ParseHello(b); err == nil {
			for _, f := range h.Files {
				if checkPath(f) != nil {
					t.Fatalf("accepted file %q", f)
				}
			}
		}
	})
}

// TestTorchWeightsOverFakeTorch runs the library's PyTorch backend over a
// fake torch on host memory (testdata/faketorch): its release and reload
// logic is tested on machines without a GPU too.
func TestTorchWeightsOverFakeTorch(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 missing: make setup installs it")
		}
		t.Skip("python3 missing")
	}
	var stderr strings.Builder
	c := exec.Command(py, "testdata/torchweights_test.py", ".")
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil || !strings.HasPrefix(string(out), "ok ") {
		t.Fatalf("%v\n%s%s", err, out, stderr.String())
	}
	t.Log(strings.TrimSpace(string(out)))
}
