// Package sdnotify tells a supervisor how a daemon is doing through
// systemd's notify protocol: one datagram of "KEY=value" lines to the
// unix socket named by $NOTIFY_SOCKET (a path, or an abstract name written
// with a leading '@').
//
// Why: a worker starts `gpuwarm mount` at boot and must not start the
// functions that read from the mount before it serves. Under a unit with
// Type=notify, systemd holds back the units ordered after the mount until
// READY=1 arrives; without a supervisor ($NOTIFY_SOCKET unset) Notify does
// nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Notify sends state (for example "READY=1\nSTATUS=serving /mnt") and
// reports whether there was a supervisor to send it to.
func Notify(state string) (bool, error) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return false, nil
	}
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("notify %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("notify %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	return true, nil
}
