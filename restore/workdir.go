package restore

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Work directories (CRIU's images, sockets, logs) are named
// gpuwarm-<what>-<pid>-<random> in TMPDIR. A restore or snapshot killed
// with SIGKILL cannot remove its own; the next one started on the machine
// removes those whose process is gone.

// workPrefixes are the kinds of work directory.
var workPrefixes = []string{"gpuwarm-restore-", "gpuwarm-dump-"}

// makeWorkDir creates this process's work directory for what, after
// removing those of dead processes.
func makeWorkDir(what string, log *slog.Logger) (string, error) {
	removeDeadWorkDirs(os.TempDir(), log)
	return os.MkdirTemp("", fmt.Sprintf("gpuwarm-%s-%d-", what, os.Getpid()))
}

// removeDeadWorkDirs removes work directories in dir whose owner's PID no
// longer runs. A reused PID keeps its directory until a later start.
func removeDeadWorkDirs(dir string, log *slog.Logger) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var top syscall.Stat_t
	if syscall.Stat(dir, &top) != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		var rest string
		for _, p := range workPrefixes {
			if r, ok := strings.CutPrefix(name, p); ok {
				rest = r
			}
		}
		pidS, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidS)
		if !ok || err != nil || pid <= 0 || !e.IsDir() {
			continue
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			continue // alive (or not ours to judge)
		}
		p := filepath.Join(dir, name)
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) != nil || st.Dev != top.Dev {
			continue // a mount point: never descend into another filesystem
		}
		if err := os.RemoveAll(p); err == nil && log != nil {
			log.Info("removed the work directory of a dead gpuwarm process", "dir", p, "pid", pid)
		}
	}
}
