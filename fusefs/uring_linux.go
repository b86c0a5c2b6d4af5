package fusefs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/gpuwarm/gpuwarm/fuseuring"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// mountServer mounts rawFS at dir and starts serving it. For io_uring it
// mounts the filesystem itself and hands go-fuse the descriptor (go-fuse's
// "/dev/fd/N" mount point), because the ring queues are set up on that
// descriptor, which go-fuse does not share; it returns the descriptor then,
// -1 otherwise.
func mountServer(dir string, rawFS fuse.RawFileSystem, mo *fuse.MountOptions, uring bool, log *slog.Logger) (*fuse.Server, int, error) {
	if uring {
		// Once INIT has negotiated io_uring, requests wait for the rings.
		if err := fuseuring.Preflight(); err != nil {
			log.Warn("FUSE requests come through /dev/fuse: this process cannot set up io_uring rings", "err", err)
			uring = false
		}
	}
	if !uring {
		srv, err := fuse.NewServer(rawFS, dir, mo)
		if err != nil {
			return nil, -1, err
		}
		go srv.Serve()
		if err := srv.WaitMount(); err != nil {
			return nil, -1, err
		}
		return srv, -1, nil
	}
	mo.ExtraCapabilities |= fuse.CAP_OVER_IO_URING
	mo.DirectMount = false
	fd, err := syscall.Open("/dev/fuse", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, -1, fmt.Errorf("open /dev/fuse: %w", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		syscall.Close(fd)
		return nil, -1, err
	}
	// What go-fuse's direct mount passes (fd first; then the options).
	data := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", st.Mode&syscall.S_IFMT),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
		fmt.Sprintf("max_read=%d", mo.MaxWrite),
	}
	data = append(data, mo.Options...)
	if mo.AllowOther {
		data = append(data, "allow_other")
	}
	if err := syscall.Mount(mo.FsName, dir, "fuse."+mo.Name, syscall.MS_NOSUID|syscall.MS_NODEV, strings.Join(data, ",")); err != nil {
		syscall.Close(fd)
		return nil, -1, err
	}
	srv, err := fuse.NewServer(rawFS, fmt.Sprintf("/dev/fd/%d", fd), mo)
	if err != nil {
		syscall.Unmount(dir, syscall.MNT_DETACH)
		return nil, -1, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		syscall.Unmount(dir, syscall.MNT_DETACH)
		return nil, -1, err
	}
	return srv, fd, nil
}

// serveRing moves the connection's requests to io_uring queues if the
// kernel offers them; nil if it does not (requests keep coming through
// /dev/fuse). An error means the mount cannot serve: the kernel holds its
// requests for rings that could not be set up (it was aborted and detached).
func serveRing(dir string, srv *fuse.Server, fd int, rawFS fuse.RawFileSystem, mo *fuse.MountOptions, entries int, log *slog.Logger) (*fuseuring.Server, error) {
	ks := srv.KernelSettings()
	if ks.Flags64()&fuse.CAP_OVER_IO_URING == 0 {
		log.Info("FUSE requests come through /dev/fuse: the kernel does not offer io_uring queues (Linux 6.14 or later, with the fuse module's enable_uring parameter set: echo 1 > /sys/module/fuse/parameters/enable_uring)")
		return nil, nil
	}
	opt := fuseuring.Options{MaxWrite: mo.MaxWrite, EntriesPerQueue: entries, Logger: log}
	ps, ok := ownProtocolServer(srv)
	if ok {
		opt.Primed = true
	} else {
		log.Warn("go-fuse's Server is not laid out as this build expects: the rings get a protocol server of their own, and a signal to a process waiting on the mount does not cancel its request")
		ps = fuse.NewProtocolServer(rawFS, mo)
	}
	r, err := fuseuring.Serve(fd, ps, ks, opt)
	if errors.Is(err, fuseuring.ErrStuck) {
		if aerr := abortConnection(dir); aerr != nil {
			err = fmt.Errorf("%w; aborting it failed too (%v): echo 1 > /sys/fs/fuse/connections/*/abort for this mount", err, aerr)
		}
		syscall.Unmount(dir, syscall.MNT_DETACH)
		return nil, fmt.Errorf("io_uring queues: %w; mount without --fuse-uring", err)
	}
	if err != nil {
		log.Warn("FUSE requests come through /dev/fuse: the io_uring queues could not be set up", "err", err)
		return nil, nil
	}
	log.Info("FUSE requests come through io_uring queues, one per CPU")
	return r, nil
}

// ownProtocolServer returns srv's own protocol server, the one its
// /dev/fuse readers hand requests to, as a fuse.ProtocolServer, so that
// requests answered through the rings are among those an INTERRUPT (which
// comes through /dev/fuse) looks for. go-fuse does not export it: a Server
// embeds it first and a ProtocolServer is nothing else, which is checked
// here (false if a go-fuse version changes that).
func ownProtocolServer(srv *fuse.Server) (*fuse.ProtocolServer, bool) {
	st, pt := reflect.TypeFor[fuse.Server](), reflect.TypeFor[fuse.ProtocolServer]()
	if st.NumField() == 0 || pt.NumField() != 1 {
		return nil, false
	}
	sf, pf := st.Field(0), pt.Field(0)
	if !sf.Anonymous || sf.Name != "protocolServer" || sf.Offset != 0 ||
		pf.Type != sf.Type || pf.Offset != 0 || pt.Size() != sf.Type.Size() {
		return nil, false
	}
	return (*fuse.ProtocolServer)(unsafe.Pointer(srv)), true
}

// abortConnection aborts the FUSE connection mounted at dir (its requests
// then fail with ENOTCONN), found through mountinfo, without a request to
// the mount.
func abortConnection(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	fields, ok := gpuwarmMount(abs)
	if !ok {
		return fmt.Errorf("no gpuwarm mount at %s in /proc/self/mountinfo", abs)
	}
	_, minor, ok := strings.Cut(fields[2], ":")
	if !ok {
		return fmt.Errorf("mountinfo: no device number for %s", abs)
	}
	if _, err := os.Stat("/sys/fs/fuse/connections/" + minor); err != nil {
		// fusectl may not be mounted.
		syscall.Mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, "")
	}
	return os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0)
}

// Unmount unmounts the filesystem and waits for its server to stop.
func (s *Server) Unmount() error {
	if !s.ownMount {
		return s.Server.Unmount()
	}
	var err error
	delay := time.Duration(0)
	for try := 0; try < 5; try++ {
		if err = syscall.Unmount(s.Dir, 0); err == nil || err == syscall.EINVAL {
			err = nil
			break
		}
		// The kernel may still count files just closed as open.
		delay = 2*delay + 5*time.Millisecond
		time.Sleep(delay)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", s.Dir, err)
	}
	s.Wait()
	return nil
}

// Wait waits until the filesystem is unmounted and its server stopped.
func (s *Server) Wait() {
	s.Server.Wait()
	if s.ring != nil {
		s.ring.Wait()
	}
}

// URingRequests counts the requests answered through io_uring queues (0
// if the kernel sends them through /dev/fuse).
func (s *Server) URingRequests() int64 {
	if s.ring == nil {
		return 0
	}
	n, _ := s.ring.Requests()
	return n
}
