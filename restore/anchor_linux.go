package restore

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A lazily restored tree must not run on without its memory: once the
// userfaultfds close (their holder died), the kernel fills every missing
// page with zeros. The guard process (cmd/gpuwarm) kills the tree when
// `gpuwarm restore` dies, but not when both die at once. The anchor closes
// that gap for trees in their own PID namespace (`gpuwarm run` without
// --host-pids): until every page is in place, this process ptrace-seizes
// the namespace's init with PTRACE_O_EXITKILL, so the kernel itself
// SIGKILLs it, and with it the whole namespace, whenever the tracing
// thread goes, however this process dies. Trees in the host's PID
// namespace (CUDA workloads) have no single process whose death takes the
// rest along; the guard alone covers them.
//
// While seized, the root's signals pass through the tracing thread, which
// forwards each one at once (PTRACE_CONT with the signal) and leaves
// group-stops in place (PTRACE_LISTEN). It never reaps: the root is this
// process's child, reaped by Process.Wait, so only stops are waited for.

type anchor struct {
	root    int
	release chan struct{}
	done    chan struct{}
}

// nsInit reports whether pid is the init of its own (child) PID namespace.
func nsInit(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "NSpid:" {
			return f[len(f)-1] == "1"
		}
	}
	return false
}

// anchorTree seizes root; Release detaches once memory is in place.
func anchorTree(root int) (*anchor, error) {
	a := &anchor{root: root, release: make(chan struct{}), done: make(chan struct{})}
	errc := make(chan error, 1)
	go a.run(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	return a, nil
}

// Release detaches from the tree (which then runs on its own) and returns
// once it has. Safe to call more than once.
func (a *anchor) Release() {
	select {
	case <-a.release:
	default:
		close(a.release)
	}
	<-a.done
}

// childInfo is the part of siginfo_t that waitid fills for a child.
type childInfo struct {
	Signo, Errno, Code, _ int32
	Pid                   int32
	UID                   uint32
	Status                int32
	_                     [100]byte
}

const wall = 0x40000000 // __WALL

// stopped returns the signal of root's pending stop, 0 if none; err is
// ECHILD once root is gone.
func (a *anchor) stopped() (int, error) {
	var ci childInfo
	_, _, e := unix.Syscall6(unix.SYS_WAITID, unix.P_PID, uintptr(a.root), uintptr(unsafe.Pointer(&ci)),
		unix.WSTOPPED|unix.WNOHANG|wall, 0, 0)
	if e != 0 {
		return 0, e
	}
	if ci.Pid == 0 {
		return 0, nil
	}
	return int(ci.Status), nil
}

func ptrace(req, pid int, addr, data uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// A stop's status (waitid's si_status) is the signal for a
// signal-delivery-stop, and PTRACE_EVENT_STOP<<8 | signal for the stops of
// a seized tracee that deliver nothing: group-stops (the signal is the one
// that stopped it) and the stop PTRACE_INTERRUPT asks for (SIGTRAP).
func eventStop(status int) bool { return status>>8 != 0 }

func (a *anchor) run(errc chan<- error) {
	// ptrace belongs to the thread that seized: this goroutine keeps it,
	// and ends (ending the thread) only once detached or the root is gone.
	runtime.LockOSThread()
	if err := ptrace(unix.PTRACE_SEIZE, a.root, 0, unix.PTRACE_O_EXITKILL); err != nil {
		close(a.done)
		errc <- fmt.Errorf("seize pid %d: %w", a.root, err)
		return
	}
	errc <- nil
	for {
		select {
		case <-a.release:
			a.detach()
			return
		default:
		}
		sig, err := a.stopped()
		if err != nil {
			close(a.done)
			return // gone (reaped by its waiter)
		}
		if sig == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		a.resume(sig)
	}
}

// resume ends a stop of the root the way it would have ended untraced:
// a signal is delivered, a group-stop stays stopped until SIGCONT.
func (a *anchor) resume(status int) {
	if !eventStop(status) {
		ptrace(unix.PTRACE_CONT, a.root, 0, uintptr(status))
		return
	}
	if status&0xff == int(unix.SIGTRAP) {
		ptrace(unix.PTRACE_CONT, a.root, 0, 0)
		return
	}
	ptrace(unix.PTRACE_LISTEN, a.root, 0, 0)
}

// detach interrupts the root and detaches at the stop, passing on a signal
// being delivered there; it closes done.
func (a *anchor) detach() {
	if err := ptrace(unix.PTRACE_INTERRUPT, a.root, 0, 0); err != nil {
		close(a.done)
		return // gone
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		sig, err := a.stopped()
		if err != nil {
			close(a.done)
			return
		}
		if sig == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		pass := 0
		if !eventStop(sig) {
			pass = sig // a signal being delivered goes on with it
		}
		if err := ptrace(unix.PTRACE_DETACH, a.root, 0, uintptr(pass)); err == nil || errors.Is(err, syscall.ESRCH) {
			close(a.done)
			return
		}
	}
	// Never end this thread while attached: its exit would kill the tree
	// (EXITKILL). A root that does not stop in 10 s is in trouble anyway;
	// the thread stays, parked, and the caller goes on.
	close(a.done)
	select {}
}
