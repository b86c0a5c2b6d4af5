package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// aclXattr encodes a POSIX access ACL (the kernel's xattr form): the owner
// rw, user uid r, the owning group nothing, mask r, others nothing.
func aclXattr(uid uint32) []byte {
	const undef = ^uint32(0)
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(2)) // version
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, undef}, {0x02, 4, uid}, {0x04, 0, undef}, {0x10, 4, undef}, {0x20, 0, undef}} {
		binary.Write(&b, binary.LittleEndian, e)
	}
	return b.Bytes()
}

// TestPOSIXACLThroughMount: a packed file's access ACL is the source's
// through the mount, and with --posix-acl the kernel enforces it: a user
// the ACL names may read a file its mode bits alone would not let it read,
// and others still may not.
func TestPOSIXACLThroughMount(t *testing.T) {
	requireFUSE(t)
	// Readable by an unprivileged user all the way down.
	tmp, err := os.MkdirTemp("", "gpuwarm-acl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	os.Chmod(tmp, 0o755)
	src, storeDir, mnt := filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	os.MkdirAll(src, 0o755)
	secret := filepath.Join(src, "secret")
	if err := os.WriteFile(secret, []byte("for nobody's eyes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const nobody, other = 65534, 65533
	acl := aclXattr(nobody)
	if err := unix.Setxattr(secret, "system.posix_acl_access", acl, 0); err != nil {
		t.Skipf("the test filesystem takes no ACLs: %v", err)
	}
	gw(t, "pack", src, "--tag", "t", "--store", storeDir)
	startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"), "--posix-acl")
	p := filepath.Join(mnt, "t", "secret")

	buf := make([]byte, 256)
	n, err := unix.Getxattr(p, "system.posix_acl_access", buf)
	if err != nil || !bytes.Equal(buf[:n], acl) {
		t.Fatalf("ACL through the mount: %x, %v; the source's: %x", buf[:max(n, 0)], err, acl)
	}
	var st, sst syscall.Stat_t
	syscall.Stat(p, &st)
	syscall.Stat(secret, &sst)
	if st.Mode != sst.Mode {
		t.Fatalf("mode %o through the mount, %o in the source", st.Mode, sst.Mode)
	}
	readAs := func(uid uint32) error {
		cmd := exec.Command("cat", p)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return errors.New(string(bytes.TrimSpace(out)))
		}
		if string(out) != "for nobody's eyes\n" {
			t.Fatalf("uid %d read %q", uid, out)
		}
		return nil
	}
	for i := 0; i < 2; i++ { // the second time from the kernel's ACL cache
		if err := readAs(nobody); err != nil {
			t.Fatalf("uid %d, named by the ACL, cannot read: %v", nobody, err)
		}
		if err := readAs(other); err == nil {
			t.Fatalf("uid %d, not named by the ACL, read a file of mode %o", other, sst.Mode&0o777)
		}
	}
}

// TestDirectoryListingsKept: the kernel keeps an image directory's
// entries (immutable, so FOPEN_CACHE_DIR): listing it again, from any
// process, asks the daemon for nothing, and the listing is the same.
func TestDirectoryListingsKept(t *testing.T) {
	requireFUSE(t)
	transports(t, directoryListingsKept)
}

func directoryListingsKept(t *testing.T, flags []string) {
	tmp := t.TempDir()
	src, storeDir, mnt := filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	for i := 0; i < 300; i++ {
		os.WriteFile(filepath.Join(src, "d", "f"+strconv.Itoa(i)), []byte{byte(i)}, 0o644)
	}
	gw(t, "pack", src, "--tag", "t", "--store", storeDir)
	d := startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"), append([]string{"--debug"}, flags...)...)
	dir := filepath.Join(mnt, "t", "d")
	list := func() [][]byte {
		out, err := exec.Command("ls", "-f", dir).Output()
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Fields(out) // not sorted (-f): the daemon's order
	}
	first := list()
	if len(first) != 300 {
		t.Fatalf("listed %d entries, want 300", len(first))
	}
	d.syncLog(t)
	before := strings.Count(d.logs.String(), "READDIR")
	for i := 0; i < 5; i++ {
		if got := list(); !slices.EqualFunc(got, first, bytes.Equal) {
			t.Fatalf("listing %d differs from the first", i+2)
		}
	}
	d.syncLog(t)
	if after := strings.Count(d.logs.String(), "READDIR"); after != before {
		t.Fatalf("five more listings sent %d READDIR(PLUS) requests to the daemon; the kernel should have kept the entries", after-before)
	}
}
