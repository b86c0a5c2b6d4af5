package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/gpuwarm/gpuwarm/internal/findbin"
)

// CRIU is a located, version-checked criu binary.
type CRIU struct {
	Path    string
	Version string
	Major   int
	Minor   int
}

// MinMajor.MinMinor is the oldest CRIU gpuwarm drives: 3.x fails on
// current kernels (vDSO layout) and lacks the page-server protocol it uses;
// before 4.2 it cannot dump TCP or UDP sockets on kernels 6.16 and later.
const (
	MinMajor = 4
	MinMinor = 2
)

// ErrNoCRIU says CRIU is missing or unusable.
var ErrNoCRIU = errors.New("CRIU unavailable")

// FindCRIU locates criu: $GPUWARM_CRIU, /opt/gpuwarm/criu/bin/criu (what
// make setup installs), then PATH.
func FindCRIU(ctx context.Context) (*CRIU, error) {
	c, err := findbin.Find("GPUWARM_CRIU", []string{"/opt/gpuwarm/criu/bin/criu"}, "criu", func(p string) (*CRIU, error) {
		return probe(ctx, p)
	})
	if err != nil {
		return nil, fmt.Errorf("%w: no CRIU >= %d.%d found (%v); install it with `make setup` (scripts/install-criu.sh) or set GPUWARM_CRIU", ErrNoCRIU, MinMajor, MinMinor, err)
	}
	if err := WarmKerndat(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "gpuwarm: warning:", err)
	}
	return c, nil
}

var versionRE = regexp.MustCompile(`Version:\s*(\d+)\.(\d+)(\.\d+)?`)

func probe(ctx context.Context, path string) (*CRIU, error) {
	out, err := findbin.Version(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("%s --version printed no version: %q", path, out)
	}
	major, _ := strconv.Atoi(string(m[1]))
	minor, _ := strconv.Atoi(string(m[2]))
	c := &CRIU{Path: path, Version: strings.TrimPrefix(string(m[0]), "Version:"), Major: major, Minor: minor}
	c.Version = strings.TrimSpace(c.Version)
	if major < MinMajor || major == MinMajor && minor < MinMinor {
		return nil, fmt.Errorf("%s is CRIU %s, too old (gpuwarm needs >= %d.%d: 3.x fails on kernel 6.x, 4.1 cannot dump network sockets on kernel 6.16+): run make setup (scripts/install-criu.sh)", path, c.Version, MinMajor, MinMinor)
	}
	return c, nil
}

// CheckUserfaultfd tells whether this kernel lets gpuwarm restore lazily:
// it opens a userfaultfd (microseconds, unlike a CRIU feature check).
func CheckUserfaultfd() error {
	fd, _, errno := syscall.Syscall(sysUserfaultfd, uintptr(syscall.O_CLOEXEC|syscall.O_NONBLOCK), 0, 0)
	if errno != 0 {
		switch errno {
		case syscall.ENOSYS:
			return fmt.Errorf("lazy restore needs userfaultfd, which this kernel lacks (CONFIG_USERFAULTFD); restore without --lazy")
		case syscall.EPERM:
			return fmt.Errorf("lazy restore needs userfaultfd, which this process may not use (vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE); run as root or restore without --lazy")
		}
		return fmt.Errorf("lazy restore: userfaultfd: %v; restore without --lazy", errno)
	}
	syscall.Close(int(fd))
	return nil
}

// sysUserfaultfd is the x86-64 system call number.
const sysUserfaultfd = 323

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
