package container

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Default places on a worker.
const (
	DefaultDir      = "/var/lib/gpuwarm/containers" // one directory per container
	DefaultRuncRoot = "/run/gpuwarm/runc"           // runc's state, apart from other runc users
)

// Record is what gpuwarm keeps of a container on the worker, beside
// runc's own state: what it runs and what it was made from.
type Record struct {
	Name       string    `json:"name"`
	Image      string    `json:"image"`    // the tag it was started from
	ImageID    string    `json:"image_id"` // the image its root filesystem is
	Snapshot   string    `json:"snapshot,omitempty"`
	SnapshotID string    `json:"snapshot_id,omitempty"`
	Mount      string    `json:"mount"` // the gpuwarm mount the image is read through
	GPUs       []string  `json:"gpus,omitempty"`
	Memory     int64     `json:"memory,omitempty"`
	CPUs       float64   `json:"cpus,omitempty"`
	OwnNet     bool      `json:"own_net,omitempty"`
	Log        string    `json:"log,omitempty"`
	Created    time.Time `json:"created"`
}

// Container is one container's directory on the worker:
//
//	DIR/NAME/container.json  the Record
//	DIR/NAME/config.json     the OCI runtime config (DIR/NAME is runc's bundle)
//	DIR/NAME/upper, work     the overlay's writable layer and its work dir
//	DIR/NAME/rootfs          the overlay: upper over the image on the mount
type Container struct {
	Record
	Dir string
}

// ValidName checks a container name (it names a directory, a cgroup and
// a runc container, so it follows the tag rules).
func ValidName(name string) error { return manifest.ValidTag(name) }

// Path returns where container name lives under dir.
func Path(dir, name string) string { return filepath.Join(dir, name) }

func (c *Container) bundle() string { return c.Dir }
func (c *Container) Rootfs() string { return filepath.Join(c.Dir, "rootfs") }
func (c *Container) Upper() string  { return filepath.Join(c.Dir, "upper") }
func (c *Container) work() string   { return filepath.Join(c.Dir, "work") }

// ErrExists says a container of that name is on the worker already.
var ErrExists = errors.New("container exists")

// Prepare makes a container's directory: its record, an empty writable
// layer (filled by fill, if set: a restore's saved layer) and the overlay
// of it over lower, the image's root on the mount. On failure it leaves
// nothing behind.
func Prepare(dir string, rec Record, lower string, fill func(upper string) error) (_ *Container, err error) {
	if err := ValidName(rec.Name); err != nil {
		return nil, fmt.Errorf("container name: %w", err)
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	c := &Container{Record: rec, Dir: Path(dir, rec.Name)}
	if err := os.Mkdir(c.Dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: %s (gpuwarm ps lists them; gpuwarm rm %s removes it)", ErrExists, rec.Name, rec.Name)
		}
		return nil, err
	}
	defer func() {
		if err != nil {
			c.unmount()
			os.RemoveAll(c.Dir)
		}
	}()
	for _, d := range []string{c.Upper(), c.work(), c.Rootfs()} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if fill != nil {
		if err := fill(c.Upper()); err != nil {
			return nil, err
		}
	}
	if err := c.Save(); err != nil {
		return nil, err
	}
	// index=off: the lower is a FUSE filesystem without stable file
	// handles, and a restore mounts the same lower with another upper.
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,index=off,redirect_dir=off,metacopy=off", lower, c.Upper(), c.work())
	if err := unix.Mount("overlay", c.Rootfs(), "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("container %s: overlay over %s: %w", rec.Name, lower, err)
	}
	return c, nil
}

func (c *Container) Save() error {
	b, err := json.MarshalIndent(c.Record, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.Dir, ".container.json")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(c.Dir, "container.json"))
}

// WriteSpec writes the bundle's config.json.
func (c *Container) WriteSpec(s *specs.Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Dir, "config.json"), b, 0o600)
}

// Spec reads the bundle's config.json.
func (c *Container) Spec() (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(c.Dir, "config.json"))
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s/config.json: %w", c.Dir, err)
	}
	return &s, nil
}

// Load reads container name's record.
func Load(dir, name string) (*Container, error) {
	if err := ValidName(name); err != nil {
		return nil, fmt.Errorf("container name: %w", err)
	}
	c := &Container{Dir: Path(dir, name)}
	b, err := os.ReadFile(filepath.Join(c.Dir, "container.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: no container named %q on this worker (gpuwarm ps lists them)", os.ErrNotExist, name)
		}
		return nil, err
	}
	if err := json.Unmarshal(b, &c.Record); err != nil {
		return nil, fmt.Errorf("container %s: %w", name, err)
	}
	return c, nil
}

// List reads every container's record under dir, by name.
func List(dir string) ([]*Container, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []*Container
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if c, err := Load(dir, e.Name()); err == nil {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Start runs the container's process (runc run, detached) and returns its
// PID on the host.
func (c *Container) Start(ctx context.Context, rc *Runc, stdio Stdio) (int, error) {
	return rc.Run(ctx, c.Name, c.bundle(), stdio)
}

// Checkpoint dumps the container, whose init is pid, through runc and
// CRIU into imgDir, its memory through the page server at psAddr, and
// writes the writable layer beside the CRIU images as rootfs-diff.tar
// and its tmpfs mounts as SaveTmpfs does (the container paused for it,
// CRIU keeping it frozen through the dump).
func (c *Container) Checkpoint(ctx context.Context, rc *Runc, pid int, imgDir, workDir, psAddr string, leaveRunning bool) error {
	spec, err := c.Spec()
	if err != nil {
		return err
	}
	if err := rc.Pause(ctx, c.Name); err != nil {
		return err
	}
	paused := true
	defer func() {
		if paused { // a failed dump leaves the tree running, as it was
			rc.Resume(context.WithoutCancel(ctx), c.Name)
		}
	}()
	external, err := SaveTmpfs(pid, imgDir, runtimeTmpfs(spec))
	if err != nil {
		return err
	}
	if _, err := c.CRIUConfig(false, external...); err != nil {
		return err
	}
	if err := rc.Checkpoint(ctx, c.Name, CheckpointOptions{ImagePath: imgDir, WorkPath: workDir, PageServer: psAddr, LeaveRunning: leaveRunning}); err != nil {
		return fmt.Errorf("%w%s", err, criuLogErrors(filepath.Join(workDir, "dump.log")))
	}
	paused = leaveRunning // CRIU leaves a running tree as it found it: paused
	// The processes are stopped or gone: the layer no longer changes
	// under the dump (with --leave-running it is read after the dump, as
	// podman does).
	f, err := os.Create(filepath.Join(imgDir, DiffFile))
	if err != nil {
		return err
	}
	if err := WriteDiff(c.Upper(), f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// DiffFile is the writable layer's name in a container snapshot.
const DiffFile = "rootfs-diff.tar"

// LoadDiff returns a fill function for Prepare that unpacks a snapshot's
// writable layer from its images directory on the mount.
func LoadDiff(imgDir string) func(upper string) error {
	return func(upper string) error {
		f, err := os.Open(filepath.Join(imgDir, DiffFile))
		if err != nil {
			return fmt.Errorf("the snapshot has no writable layer: %w", err)
		}
		defer f.Close()
		// Large reads: the layer comes through the mount, a round trip
		// per read the page cache does not already hold.
		return ApplyDiff(bufio.NewReaderSize(f, 1<<20), upper)
	}
}

// CRIUConfig is the CRIU configuration file a checkpoint or restore passes
// through runc's org.criu.config annotation: leave-stopped keeps the
// restored tree stopped until gpuwarm has anchored it (or filled its
// memory). A container in a network namespace of its own (loopback only,
// made by gpuwarm: nothing outside can reach it) needs no network lock,
// which CRIU would take with iptables-restore, a tool GPU hosts often lack.
// extra lines follow (the external tmpfs mounts of SaveTmpfs and
// MountTmpfs).
func (c *Container) CRIUConfig(leaveStopped bool, extra ...string) (string, error) {
	p := filepath.Join(c.Dir, "criu.conf")
	lines := append([]string(nil), extra...)
	if leaveStopped {
		lines = append(lines, "leave-stopped")
	}
	if c.OwnNet {
		lines = append(lines, "network-lock skip")
	}
	return p, os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// Restore creates the container from CRIU images at imgDir (runc restore,
// detached) and returns its init's PID on the host.
func (c *Container) Restore(ctx context.Context, rc *Runc, imgDir, workDir string, lazy bool, stdio Stdio) (int, error) {
	pid, err := rc.Restore(ctx, c.Name, c.bundle(), RestoreOptions{ImagePath: imgDir, WorkPath: workDir, LazyPages: lazy, Stdio: stdio})
	if err != nil {
		return 0, fmt.Errorf("%w%s", err, criuLogErrors(filepath.Join(workDir, "restore.log")))
	}
	return pid, nil
}

// NetNSPath is where container name's own network namespace is pinned.
func NetNSPath(name string) string { return filepath.Join(NetNSDir, name) }

// SetNetNS points a config's network namespace (if it has one of its own)
// at path: a restore's new container gets a namespace of its own.
func SetNetNS(s *specs.Spec, path string) bool {
	for i, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			s.Linux.Namespaces[i].Path = path
			return true
		}
	}
	return false
}

// Remove ends the container (if it runs), removes it from runc, unmounts
// its root filesystem and deletes its directory.
func (c *Container) Remove(ctx context.Context, rc *Runc) error {
	var errs []error
	if err := rc.Delete(ctx, c.Name, true); err != nil {
		errs = append(errs, err)
	}
	if c.OwnNet {
		if err := RemoveNetNS(NetNSPath(c.Name)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.unmount(); err != nil {
		errs = append(errs, err)
	}
	if err := c.unmountTmpfs(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *Container) unmount() error {
	err := unix.Unmount(c.Rootfs(), unix.MNT_DETACH)
	if err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("unmount %s: %w", c.Rootfs(), err)
	}
	return nil
}

// criuLogErrors quotes the last error lines of a CRIU log.
func criuLogErrors(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, _ := f.Stat()
	const tail = 64 << 10
	if st != nil && st.Size() > tail {
		f.Seek(st.Size()-tail, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	var errs []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "Error") && !strings.Contains(line, "RLIMIT") {
			errs = append(errs, strings.TrimSpace(line))
		}
	}
	if len(errs) > 6 {
		errs = errs[len(errs)-6:]
	}
	if len(errs) == 0 {
		return ""
	}
	return "\n  CRIU log " + path + ":\n  " + strings.Join(errs, "\n  ")
}

// Annotations a container snapshot carries besides a snapshot's own.
const (
	AnnImage   = "gpuwarm.container.image"    // the tag the container was started from
	AnnImageID = "gpuwarm.container.image_id" // the image its root filesystem is
	AnnName    = "gpuwarm.container.name"
)

// SpecFile is the runtime config a container snapshot carries beside the
// CRIU images; a restore makes its new container's config from it.
const SpecFile = "container-config.json"

// SaveSpec copies the container's config.json into a snapshot's images.
func (c *Container) SaveSpec(imgDir string) error {
	b, err := os.ReadFile(filepath.Join(c.Dir, "config.json"))
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(imgDir, SpecFile), b, 0o600)
}

// SnapshotSpec reads the runtime config of the snapshot at imgDir.
func SnapshotSpec(imgDir string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(imgDir, SpecFile))
	if err != nil {
		return nil, fmt.Errorf("not a container snapshot: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", SpecFile, err)
	}
	if s.Process == nil || s.Linux == nil || s.Root == nil {
		return nil, fmt.Errorf("%s: incomplete runtime config", SpecFile)
	}
	return &s, nil
}
