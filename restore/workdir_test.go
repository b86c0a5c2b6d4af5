package restore

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// Work directories of dead processes are removed at the next start; those
// of live ones and other files stay.
func TestDeadWorkDirsRemoved(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip(err)
	}
	dead := filepath.Join(dir, "gpuwarm-restore-"+strconv.Itoa(cmd.Process.Pid)+"-123")
	deadDump := filepath.Join(dir, "gpuwarm-dump-"+strconv.Itoa(cmd.Process.Pid)+"-456")
	live := filepath.Join(dir, "gpuwarm-restore-"+strconv.Itoa(os.Getpid())+"-789")
	other := filepath.Join(dir, "gpuwarm-restore-notapid")
	for _, d := range []string{dead, deadDump, live, other} {
		os.MkdirAll(filepath.Join(d, "images"), 0o755)
		os.WriteFile(filepath.Join(d, "images", "x.img"), []byte("x"), 0o644)
	}
	removeDeadWorkDirs(dir, nil)
	for _, d := range []string{dead, deadDump} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s of a dead process is still there", d)
		}
	}
	for _, d := range []string{live, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
}
