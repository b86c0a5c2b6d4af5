package fusefs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/transport/poll"
	"github.com/gpuwarm/gpuwarm/fusefs/transport/uring"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// mountServer mounts rawFS at dir and starts serving it: through go-fuse's
// /dev/fuse readers; or (spin > 0) through a polling thread (package
// transport/poll), which it returns; or, for io_uring, through go-fuse's readers
// until serveRing moves the requests to rings. For the last two it mounts
// the filesystem itself (poll.Mount) and returns the connection's
// descriptor, -1 otherwise.
func mountServer(dir string, rawFS fuse.RawFileSystem, mo *fuse.MountOptions, useURing bool, spin time.Duration, log *slog.Logger) (*fuse.Server, int, *poll.Server, error) {
	if useURing {
		// Once INIT has negotiated io_uring, requests wait for the rings.
		if err := uring.Preflight(); err != nil {
			log.Warn("FUSE requests come through /dev/fuse: this process cannot set up io_uring rings", "err", err)
			useURing = false
		}
	}
	var (
		srv *fuse.Server
		fd  = -1
		err error
	)
	if !useURing && spin <= 0 {
		srv, err = fuse.NewServer(rawFS, dir, mo)
	} else {
		if useURing {
			mo.ExtraCapabilities |= fuse.CAP_OVER_IO_URING
		}
		srv, fd, err = poll.Mount(dir, rawFS, mo)
	}
	if err != nil {
		return nil, -1, nil, err
	}
	var poller *poll.Server
	if !useURing && fd >= 0 {
		ps, ok := poll.OwnProtocolServer(srv)
		if !ok {
			log.Warn("go-fuse's Server is not laid out as this build expects: FUSE requests come through go-fuse's /dev/fuse readers, which sleep between requests (--fuse-spin has no effect)")
		} else if poller, err = poll.Serve(fd, ps, poll.Options{MaxWrite: mo.MaxWrite, Spin: spin, Logger: log}); err != nil {
			log.Warn("FUSE requests come through go-fuse's /dev/fuse readers", "err", err)
			poller = nil
		}
	}
	if poller != nil {
		// go-fuse's Serve then sees the connection's end, cancels what is
		// left and runs the filesystem's OnUnmount.
		go func() { <-poller.Stopped(); srv.Serve() }()
	} else {
		go srv.Serve()
	}
	if err := srv.WaitMount(); err != nil {
		if fd >= 0 {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		return nil, -1, nil, err
	}
	return srv, fd, poller, nil
}

// serveRing moves the connection's requests to io_uring queues if the
// kernel offers them; nil if it does not (requests keep coming through
// /dev/fuse). An error means the mount cannot serve: the kernel holds its
// requests for rings that could not be set up (it was aborted and detached).
func serveRing(dir string, srv *fuse.Server, fd int, rawFS fuse.RawFileSystem, mo *fuse.MountOptions, entries int, log *slog.Logger) (*uring.Server, error) {
	ks := srv.KernelSettings()
	if ks.Flags64()&fuse.CAP_OVER_IO_URING == 0 {
		log.Info("FUSE requests come through /dev/fuse: the kernel does not offer io_uring queues (Linux 6.14 or later, with the fuse module's enable_uring parameter set: echo 1 > /sys/module/fuse/parameters/enable_uring)")
		return nil, nil
	}
	opt := uring.Options{MaxWrite: mo.MaxWrite, EntriesPerQueue: entries, Logger: log}
	ps, ok := poll.OwnProtocolServer(srv)
	if ok {
		opt.Primed = true
	} else {
		log.Warn("go-fuse's Server is not laid out as this build expects: the rings get a protocol server of their own, and a signal to a process waiting on the mount does not cancel its request")
		ps = fuse.NewProtocolServer(rawFS, mo)
	}
	r, err := uring.Serve(fd, ps, ks, opt)
	if errors.Is(err, uring.ErrStuck) {
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

// abortConnection aborts the FUSE connection mounted at dir (its requests
// then fail with ENOTCONN), found through mountinfo, without a request to
// the mount.
func abortConnection(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	m, ok := gpuwarmMount(abs)
	if !ok {
		return fmt.Errorf("no gpuwarm mount at %s in /proc/self/mountinfo", abs)
	}
	_, minor, ok := strings.Cut(m.Dev, ":")
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
	if p := s.fs.poller.Load(); p != nil {
		p.Wait()
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

// PolledRequests counts the requests answered by the polling thread
// (Options.Spin; 0 if go-fuse's readers or io_uring queues serve).
func (s *Server) PolledRequests() int64 {
	p := s.fs.poller.Load()
	if p == nil {
		return 0
	}
	n, _, _ := p.Requests()
	return n
}
