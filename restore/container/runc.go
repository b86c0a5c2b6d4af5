package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/gpuwarm/gpuwarm/internal/findbin"
)

// Runc is a located, version-checked runc binary and the state directory
// gpuwarm keeps its containers in (apart from other users of runc).
type Runc struct {
	Path    string
	Version string
	Root    string // runc --root
	CRIU    string // runc --criu
}

// MinRunc is the oldest runc gpuwarm drives: 1.1 has --lazy-pages on
// restore, the org.criu.config annotation and cgroup v2.
const MinRunc = "1.1"

// ErrNoRunc says runc is missing or too old.
var ErrNoRunc = errors.New("runc unavailable")

// FindRunc locates runc: $GPUWARM_RUNC, /usr/sbin/runc (Debian's
// package, which make setup installs), then PATH.
func FindRunc(ctx context.Context, root, criu string) (*Runc, error) {
	r, err := findbin.Find("GPUWARM_RUNC", []string{"/usr/sbin/runc", "/usr/bin/runc"}, "runc", func(p string) (*Runc, error) {
		out, err := findbin.Version(ctx, p)
		if err != nil {
			return nil, err
		}
		v, ok := runcVersion(out)
		if !ok {
			return nil, fmt.Errorf("%s printed no version", p)
		}
		if !atLeast(v, MinRunc) {
			return nil, fmt.Errorf("%s is runc %s, older than %s", p, v, MinRunc)
		}
		return &Runc{Path: p, Version: v, Root: root, CRIU: criu}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: no runc >= %s found (%v); install it with `make setup` (apt-get install runc) or set GPUWARM_RUNC", ErrNoRunc, MinRunc, err)
	}
	return r, nil
}

var runcVersionRE = regexp.MustCompile(`runc version (\d+\.\d+(\.\d+)?)`)

func runcVersion(out []byte) (string, bool) {
	m := runcVersionRE.FindSubmatch(out)
	if m == nil {
		return "", false
	}
	return string(m[1]), true
}

// atLeast compares dotted versions numerically.
func atLeast(v, min string) bool {
	a, b := strings.Split(v, "."), strings.Split(min, ".")
	for i := 0; i < len(b); i++ {
		var x, y int
		if i < len(a) {
			x, _ = strconv.Atoi(a[i])
		}
		y, _ = strconv.Atoi(b[i])
		if x != y {
			return x > y
		}
	}
	return true
}

func (r *Runc) command(ctx context.Context, args ...string) *exec.Cmd {
	full := []string{"--root", r.Root}
	if r.CRIU != "" {
		full = append(full, "--criu", r.CRIU)
	}
	cmd := exec.CommandContext(ctx, r.Path, append(full, args...)...)
	// CRIU's no-breakpoints mode: hardware breakpoints do not fire in some
	// virtual machines (see restore.makeCriu).
	cmd.Env = append(os.Environ(), "CRIU_FAULT=130")
	return cmd
}

// exec runs runc with args and returns its error output in the error.
func (r *Runc) exec(ctx context.Context, args ...string) error {
	cmd := r.command(ctx, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runc %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Stdio is what a container's standard streams are connected to (nil:
// /dev/null). runc hands its own streams to the container; on a restore
// it passes them for the snapshot's pipes.
type Stdio struct{ Stdin, Stdout, Stderr *os.File }

func (s Stdio) apply(cmd *exec.Cmd) error {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	pick := func(f *os.File) *os.File {
		if f == nil {
			return null
		}
		return f
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pick(s.Stdin), pick(s.Stdout), pick(s.Stderr)
	return nil
}

// Run creates and starts container id from bundle, detached: runc exits
// once the container's process runs. It returns that process's PID.
func (r *Runc) Run(ctx context.Context, id, bundle string, stdio Stdio) (int, error) {
	pidFile := bundle + "/init.pid"
	os.Remove(pidFile)
	return r.detached(ctx, bundle, pidFile, stdio, "run", "--detach", "--bundle", bundle, "--pid-file", pidFile, id)
}

// CheckpointOptions are runc checkpoint's, as gpuwarm uses them.
type CheckpointOptions struct {
	ImagePath, WorkPath string
	PageServer          string // ADDRESS:PORT of gpuwarm's page server
	LeaveRunning        bool
}

// Checkpoint dumps container id through CRIU.
func (r *Runc) Checkpoint(ctx context.Context, id string, o CheckpointOptions) error {
	args := []string{"checkpoint", "--image-path", o.ImagePath, "--work-path", o.WorkPath, "--file-locks"}
	if o.PageServer != "" {
		args = append(args, "--page-server", o.PageServer)
	}
	if o.LeaveRunning {
		args = append(args, "--leave-running")
	}
	return r.exec(ctx, append(args, id)...)
}

// RestoreOptions are runc restore's, as gpuwarm uses them.
type RestoreOptions struct {
	ImagePath, WorkPath string
	LazyPages           bool
	Stdio               Stdio
}

// Restore creates container id from bundle and a checkpoint, detached,
// and returns its init's PID.
func (r *Runc) Restore(ctx context.Context, id, bundle string, o RestoreOptions) (int, error) {
	pidFile := bundle + "/init.pid"
	os.Remove(pidFile)
	args := []string{"restore", "--detach", "--bundle", bundle, "--image-path", o.ImagePath,
		"--work-path", o.WorkPath, "--pid-file", pidFile, "--file-locks"}
	if o.LazyPages {
		args = append(args, "--lazy-pages")
	}
	return r.detached(ctx, bundle, pidFile, o.Stdio, append(args, id)...)
}

// detached runs a runc command that leaves a container behind and returns
// the container's PID. The container inherits runc's standard streams, so
// they are the files given, never pipes of this process; runc's own errors
// go to a log in the bundle, quoted on failure.
func (r *Runc) detached(ctx context.Context, bundle, pidFile string, stdio Stdio, args ...string) (int, error) {
	logPath := bundle + "/runc.log"
	os.Remove(logPath)
	cmd := r.command(ctx, append([]string{"--log", logPath, "--log-format", "json"}, args...)...)
	if err := stdio.apply(cmd); err != nil {
		return 0, err
	}
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("runc %s: %w%s", args[0], err, runcLogErrors(logPath))
	}
	return readPID(pidFile)
}

// runcLogErrors quotes the error lines of a runc JSON log.
func runcLogErrors(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var msgs []string
	for _, line := range strings.Split(string(b), "\n") {
		var e struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
			msgs = append(msgs, e.Msg)
		}
	}
	if len(msgs) == 0 {
		return ""
	}
	return ": " + strings.Join(msgs, "; ")
}

// State is what runc state reports.
type State struct {
	ID     string `json:"id"`
	PID    int    `json:"pid"`
	Status string `json:"status"` // creating, created, running, paused, stopped
	Bundle string `json:"bundle"`
}

// ErrNotExist says runc has no container of that id.
var ErrNotExist = errors.New("no such container")

// State asks runc about container id.
func (r *Runc) State(ctx context.Context, id string) (*State, error) {
	cmd := r.command(ctx, "state", id)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.Contains(stderr.String(), "does not exist") {
			return nil, fmt.Errorf("%w: %s", ErrNotExist, id)
		}
		return nil, fmt.Errorf("runc state %s: %w: %s", id, err, strings.TrimSpace(stderr.String()))
	}
	var s State
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("runc state %s: %w", id, err)
	}
	return &s, nil
}

// List asks runc about every container under its root at once (runc list),
// by ID: one exec for a worker's whole ps instead of one per container.
func (r *Runc) List(ctx context.Context) (map[string]State, error) {
	cmd := r.command(ctx, "list", "--format", "json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("runc list: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var all []State
	if t := bytes.TrimSpace(out); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
		if err := json.Unmarshal(t, &all); err != nil {
			return nil, fmt.Errorf("runc list: %w", err)
		}
	}
	m := make(map[string]State, len(all))
	for _, st := range all {
		m[st.ID] = st
	}
	return m, nil
}

// Pause freezes every process of container id (its cgroup).
func (r *Runc) Pause(ctx context.Context, id string) error { return r.exec(ctx, "pause", id) }

// Resume thaws a paused container.
func (r *Runc) Resume(ctx context.Context, id string) error { return r.exec(ctx, "resume", id) }

// Kill sends sig to the container's init (with all, to every process).
func (r *Runc) Kill(ctx context.Context, id, sig string) error {
	return r.exec(ctx, "kill", id, sig)
}

// Delete removes container id; force kills it first if it runs.
func (r *Runc) Delete(ctx context.Context, id string, force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	err := r.exec(ctx, append(args, id)...)
	if err != nil && strings.Contains(err.Error(), "does not exist") {
		return nil
	}
	return err
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("runc wrote no PID file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("runc PID file %s: %q", path, b)
	}
	return pid, nil
}
