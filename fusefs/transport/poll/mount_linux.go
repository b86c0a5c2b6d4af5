package poll

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Mount mounts rawFS at dir on a /dev/fuse descriptor opened here and
// makes go-fuse's Server for it (INIT answered), without serving: the
// caller serves the connection (Serve, or io_uring queues) and runs the
// Server's Serve when that ends, or at once for go-fuse's own readers;
// then PollHack.
// go-fuse does not share the descriptor of a mount it makes; given
// "/dev/fd/N" as the mount point, it uses N. mo.DirectMount is cleared.
func Mount(dir string, rawFS fuse.RawFileSystem, mo *fuse.MountOptions) (srv *fuse.Server, fd int, err error) {
	mo.DirectMount = false
	fd, err = syscall.Open("/dev/fuse", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
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
		return nil, -1, fmt.Errorf("mount %s: %w", dir, err)
	}
	// NewServer owns fd from here, and answers INIT before it returns.
	srv, err = fuse.NewServer(rawFS, fmt.Sprintf("/dev/fd/%d", fd), mo)
	if err != nil {
		syscall.Unmount(dir, syscall.MNT_DETACH)
		return nil, -1, err
	}
	return srv, fd, nil
}

// OwnProtocolServer returns srv's own protocol server, the one its
// /dev/fuse readers hand requests to, as a fuse.ProtocolServer, so that
// requests answered elsewhere (a polling thread, io_uring queues) are among
// those an INTERRUPT looks for, and are parsed with the settings INIT
// negotiated. go-fuse does not export it: a Server embeds it first and a
// ProtocolServer is nothing else, which is checked here (false if a go-fuse
// version changes that).
func OwnProtocolServer(srv *fuse.Server) (*fuse.ProtocolServer, bool) {
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

// PollHack has the kernel send the filesystem at dir, served by go-fuse's
// protocol server, one POLL, which go-fuse answers ENOSYS: the kernel then
// sends no more. Go's runtime adds every file it opens to its epoll set in
// a system call that keeps its P (epoll_ctl), and for a FUSE file the
// kernel asks the server for POLL inside it; a process that opens files on
// the mount it serves could then stall its own server, waiting for a P the
// call holds (the Go garbage collector stopping the world made it a
// deadlock in this package's test). go-fuse's WaitMount does this for its
// own mounts, not for a "/dev/fd/N" one (Mount): call it once the
// connection is served.
func PollHack(dir string) error {
	// The name go-fuse's protocol server answers for itself (poll.go).
	fd, err := syscall.Open(dir+"/.go-fuse-epoll-hack", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("poll hack on %s: %w", dir, err)
	}
	defer syscall.Close(fd)
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	return nil
}
