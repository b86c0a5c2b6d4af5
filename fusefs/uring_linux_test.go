package fusefs

import (
	"testing"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// TestOwnProtocolServer: the go-fuse in go.mod still lays Server out as
// ownProtocolServer expects (else interrupts miss requests answered
// through the rings).
func TestOwnProtocolServer(t *testing.T) {
	srv := &fuse.Server{}
	ps, ok := ownProtocolServer(srv)
	if !ok {
		t.Fatal("go-fuse's Server no longer starts with its protocolServer: see ownProtocolServer")
	}
	if unsafe.Pointer(ps) != unsafe.Pointer(srv) {
		t.Fatal("not the server's own")
	}
}
