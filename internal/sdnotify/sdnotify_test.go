package sdnotify

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify("READY=1"); sent || err != nil {
		t.Fatalf("without a supervisor: sent %v, %v", sent, err)
	}
	abstract := fmt.Sprintf("@gpuwarm-sdnotify-test-%d", os.Getpid())
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), abstract} {
		addr := name
		if addr[0] == '@' {
			addr = "\x00" + addr[1:]
		}
		l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", name)
		if sent, err := Notify("READY=1\nSTATUS=serving"); !sent || err != nil {
			t.Fatalf("%s: sent %v, %v", name, sent, err)
		}
		buf := make([]byte, 256)
		l.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := l.Read(buf)
		l.Close()
		if err != nil || string(buf[:n]) != "READY=1\nSTATUS=serving" {
			t.Fatalf("%s: got %q, %v", name, buf[:n], err)
		}
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	if sent, err := Notify("READY=1"); sent || err == nil {
		t.Fatalf("a socket nobody listens on: sent %v, %v", sent, err)
	}
}
