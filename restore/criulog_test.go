package restore

import (
	"strings"
	"testing"
)

func TestCRIULogCauses(t *testing.T) {
	dump := "(00.001) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n" +
		"(00.020) Error (criu/sk-inet.c:199): inet: Connected TCP socket, consider using --tcp-established option.\n"
	if got := firstError(dump); got != "inet: Connected TCP socket, consider using --tcp-established option." {
		t.Errorf("firstError = %q", got)
	}
	if got := dumpCause(dump); !strings.Contains(got, "TCP connection") {
		t.Errorf("dumpCause = %q", got)
	}
	restore := "(00.010) Error (criu/files-reg.c:2100): Can't open file usr/lib/libfoo.so.1 on restore: No such file or directory\n"
	got := restoreCause(restore, map[string]string{})
	if !strings.Contains(got, "/usr/lib/libfoo.so.1 is missing") {
		t.Errorf("restoreCause without mounts = %q", got)
	}
	got = restoreCause(restore, map[string]string{AnnMounts: "/gpuwarm/app"})
	if !strings.Contains(got, "/usr/lib/libfoo.so.1") || !strings.Contains(got, "/gpuwarm/app") {
		t.Errorf("restoreCause with mounts = %q", got)
	}
	if got := firstError("only Error (x.c:1): rlimit: Can't setup RLIMIT_NOFILE\n"); got != "" {
		t.Errorf("noise taken for the cause: %q", got)
	}
}
