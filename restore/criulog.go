package restore

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// CRIU writes its log into the work directory, which a failed restore or
// snapshot removes: keepLog copies it where the error message can point,
// /var/log/gpuwarm (or TMPDIR where that cannot be written).
func keepLog(path, what string) string {
	src, err := os.Open(path)
	if err != nil {
		return path
	}
	defer src.Close()
	name := fmt.Sprintf("criu-%s-%s-%d.log", what, time.Now().UTC().Format("20060102T150405"), os.Getpid())
	for _, dir := range []string{"/var/log/gpuwarm", os.TempDir()} {
		if os.MkdirAll(dir, 0o755) != nil {
			continue
		}
		dst, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			continue
		}
		_, err = io.Copy(dst, src)
		if cerr := dst.Close(); err == nil && cerr == nil {
			return dst.Name()
		}
		os.Remove(dst.Name())
		src.Seek(0, io.SeekStart)
	}
	return path
}

// noise are CRIU error lines that are not the cause of a failure: a
// container without CAP_SYS_RESOURCE always logs the rlimit one first.
func noise(line string) bool { return strings.Contains(line, "RLIMIT_NOFILE") }

// firstError returns CRIU's first error line that is not noise, without
// its "Error (file:line):" prefix.
func firstError(log string) string {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "Error") || noise(line) {
			continue
		}
		if _, msg, ok := strings.Cut(line, "):"); ok {
			return strings.TrimSpace(msg)
		}
		return strings.TrimSpace(line)
	}
	return ""
}

var missingFile = regexp.MustCompile(`(?:Can't open file|Can't open|open file) ([^ ]+)`)

// dumpCause names, from CRIU's dump log, what the workload did that a
// snapshot cannot carry, and what to do about it.
func dumpCause(log string) string {
	switch {
	case strings.Contains(log, "Can't get 1:16 opt") || strings.Contains(log, "Connected TCP socket") || strings.Contains(log, "tcp") && strings.Contains(log, "established"):
		return "the workload has an open TCP connection, which a snapshot cannot carry: close its connections (connect again after restore) before snapshotting"
	case strings.Contains(log, "External socket") || strings.Contains(log, "unix socket") && strings.Contains(log, "external"):
		return "the workload is connected to a Unix socket outside its tree: close it before snapshotting"
	case strings.Contains(log, "Unsupported proto 262"):
		return "the workload has a Multipath TCP socket, which CRIU cannot dump (Go 1.24 and later listen with MPTCP by default): run it with GODEBUG=multipathtcp=0, or turn MPTCP off in its listener"
	case strings.Contains(log, "/dev/nvidia"):
		return "a process maps an NVIDIA device without a CUDA context (torch.compile's worker pool?): shut it down before snapshotting"
	}
	return ""
}

// restoreCause names the likely cause of a failed restore from its log.
func restoreCause(log string, ann map[string]string) string {
	switch {
	case strings.Contains(log, "Can't fork for") || strings.Contains(log, "File exists") && strings.Contains(log, "fork"):
		return "a PID the snapshot needs is taken on this worker (a process outside `gpuwarm run` is restored with its original PIDs, and a dumped PID stays taken ~1.5s): wait for it to exit, or take snapshots under `gpuwarm run`, which restores into a fresh PID namespace"
	case strings.Contains(log, "Input/output error") || strings.Contains(log, "(-5)"):
		return "reading the snapshot's images failed (a chunk missing from the store or corrupt: the mount's log names it)"
	case strings.Contains(log, "No such file or directory"):
		file := "a file the snapshot refers to"
		if m := missingFile.FindStringSubmatch(log); m != nil {
			file = "/" + strings.TrimPrefix(m[1], "/")
		}
		if mounts := ann[AnnMounts]; mounts != "" {
			return file + " is missing: are the snapshot's program files mounted at the same paths (" + mounts + ")?"
		}
		return file + " is missing on this worker: the snapshot expects the files it had open at the same paths"
	}
	return ""
}
