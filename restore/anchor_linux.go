package restore

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gpuwarm/gpuwarm/internal/proctree"
)

// A lazily restored tree must not run on without its memory: once the
// userfaultfds close (their holder, this process, died), the kernel fills
// every missing page with zeros. The guard process (cmd/gpuwarm) kills the
// tree when `gpuwarm restore` dies, but not when both die at once. The
// anchor closes that gap: until every page is in place, a thread of this
// process ptrace-seizes the tree with PTRACE_O_EXITKILL, so the kernel
// itself SIGKILLs every seized task whenever that thread goes, however
// this process dies.
//
// What is seized depends on the tree:
//   - In its own PID namespace (`gpuwarm run` without --host-pids), the
//     namespace's init alone: the kernel kills the whole namespace when its
//     init dies.
//   - In the host's PID namespace (CUDA workloads), every thread of every
//     process (SIGKILL to any thread ends its process), with fork, vfork and
//     clone tracing, so that a process or thread started while memory is
//     still arriving is seized by the kernel before it runs a single
//     instruction.
//
// CRIU leaves the restored tree stopped; the tree is seized while stopped
// and only then continued, so there is no moment at which it runs
// unseized before its memory is in place. A restore that dies before the
// seize leaves a stopped tree, which never reads a page.
//
// While seized, the tree's signals pass through the tracing thread, which
// forwards each one at once (PTRACE_CONT with the signal) and leaves
// group-stops in place (PTRACE_LISTEN). It reaps the tasks it traces, except
// the root, which is this process's child and reaped by Process.Wait;
// reaping a traced process that is not our child hands it back to its own
// parent.

type anchor struct {
	root    int
	follow  bool         // every thread of every process, and what they start
	tracees map[int]bool // tids seized (owned by the tracing thread)
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

// anchorTree seizes the tree under root (see above); Release detaches once
// memory is in place. The tree should be stopped while it is seized.
func anchorTree(root int) (*anchor, error) {
	a := &anchor{root: root, follow: !nsInit(root), tracees: map[int]bool{},
		release: make(chan struct{}), done: make(chan struct{})}
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

// siginfo's si_code for SIGCHLD and waitid.
const (
	cldExited, cldKilled, cldDumped, cldTrapped = 1, 2, 3, 4
)

func waitid(idtype, id, options int) (childInfo, error) {
	var ci childInfo
	_, _, e := unix.Syscall6(unix.SYS_WAITID, uintptr(idtype), uintptr(id), uintptr(unsafe.Pointer(&ci)),
		uintptr(options|unix.WNOHANG|wall), 0, 0)
	if e != 0 {
		return ci, e
	}
	return ci, nil
}

func ptrace(req, pid int, addr, data uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// A stop's status (waitid's si_status) is the signal for a
// signal-delivery-stop, and event<<8 | signal for the stops of a seized
// tracee that deliver nothing: PTRACE_EVENT_STOP for group-stops (the
// signal is the one that stopped it) and for the stops PTRACE_INTERRUPT and
// auto-attaching make (SIGTRAP); PTRACE_EVENT_FORK, _VFORK and _CLONE when
// a traced task starts another.
func event(status int) int { return status >> 8 }

func (a *anchor) options() uintptr {
	if a.follow {
		return unix.PTRACE_O_EXITKILL | unix.PTRACE_O_TRACEFORK | unix.PTRACE_O_TRACEVFORK | unix.PTRACE_O_TRACECLONE
	}
	return unix.PTRACE_O_EXITKILL
}

// seizeAll seizes root, or in follow mode every task of the tree, until a
// pass over the tree finds none left (tasks started by unseized ones while
// it works are found by the next pass).
func (a *anchor) seizeAll() error {
	if !a.follow {
		if err := ptrace(unix.PTRACE_SEIZE, a.root, 0, a.options()); err != nil {
			return fmt.Errorf("seize pid %d: %w", a.root, err)
		}
		a.tracees[a.root] = true
		return nil
	}
	for pass := 0; ; pass++ {
		added := 0
		for _, pid := range proctree.Tree(a.root) {
			ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil {
				continue // gone
			}
			for _, e := range ents {
				tid, err := strconv.Atoi(e.Name())
				if err != nil || a.tracees[tid] {
					continue
				}
				if err := ptrace(unix.PTRACE_SEIZE, tid, 0, a.options()); err != nil {
					if errors.Is(err, syscall.ESRCH) {
						continue // exited meanwhile
					}
					return fmt.Errorf("seize task %d of pid %d: %w", tid, pid, err)
				}
				a.tracees[tid] = true
				added++
			}
		}
		if added == 0 {
			return nil
		}
		if pass == 100 {
			return fmt.Errorf("seize: the tree of pid %d keeps starting tasks faster than they can be seized", a.root)
		}
	}
}

func (a *anchor) run(errc chan<- error) {
	// ptrace belongs to the thread that seized: this goroutine keeps it,
	// and ends (ending the thread) only once detached or the tree is gone.
	runtime.LockOSThread()
	if err := a.seizeAll(); err != nil {
		errc <- err
		a.detach() // what was seized goes free (the tree is still stopped)
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
		if len(a.tracees) == 0 {
			close(a.done)
			return // the whole tree is gone
		}
		if !a.step(false) {
			time.Sleep(time.Millisecond)
		}
	}
}

// step handles every tracee stop or exit pending now and reports whether
// there was any. Detaching, it lets each stopped tracee go instead of
// resuming it.
func (a *anchor) step(detaching bool) bool {
	any := false
	for tid := range a.tracees {
		opts := unix.WSTOPPED | unix.WEXITED
		if tid == a.root {
			opts = unix.WSTOPPED // our child: its exit is Process.Wait's
		}
		ci, err := waitid(unix.P_PID, tid, opts)
		if err != nil {
			if errors.Is(err, syscall.ECHILD) {
				delete(a.tracees, tid) // gone, reaped by its waiter
				any = true
			}
			continue
		}
		if ci.Pid == 0 {
			continue
		}
		any = true
		switch ci.Code {
		case cldExited, cldKilled, cldDumped:
			delete(a.tracees, tid)
			continue
		case cldTrapped:
		default:
			continue
		}
		status := int(ci.Status)
		switch event(status) {
		case unix.PTRACE_EVENT_FORK, unix.PTRACE_EVENT_VFORK, unix.PTRACE_EVENT_CLONE:
			// The kernel has seized the new task already; it starts in a
			// stop of its own, handled when it comes.
			var msg uint
			if ptrace(unix.PTRACE_GETEVENTMSG, tid, 0, uintptr(unsafe.Pointer(&msg))) == nil && msg != 0 {
				a.tracees[int(msg)] = true
			}
			a.let(tid, 0, detaching)
		case 0: // a signal being delivered goes on with it
			a.let(tid, status&0xff, detaching)
		case unix.PTRACE_EVENT_STOP:
			switch {
			case detaching:
				a.let(tid, 0, true)
			case status&0xff == int(unix.SIGTRAP):
				ptrace(unix.PTRACE_CONT, tid, 0, 0)
			default: // a group-stop: stays stopped until SIGCONT
				ptrace(unix.PTRACE_LISTEN, tid, 0, 0)
			}
		default:
			a.let(tid, 0, detaching)
		}
	}
	return any
}

// let resumes (or detaches) a stopped tracee, delivering sig.
func (a *anchor) let(tid, sig int, detaching bool) {
	if !detaching {
		ptrace(unix.PTRACE_CONT, tid, 0, uintptr(sig))
		return
	}
	if err := ptrace(unix.PTRACE_DETACH, tid, 0, uintptr(sig)); err == nil || errors.Is(err, syscall.ESRCH) {
		delete(a.tracees, tid)
	}
}

// detach interrupts every tracee and detaches each at its stop (passing
// on a signal being delivered there, and detaching the tasks started
// meanwhile too); it closes done.
func (a *anchor) detach() {
	for tid := range a.tracees {
		if err := ptrace(unix.PTRACE_INTERRUPT, tid, 0, 0); errors.Is(err, syscall.ESRCH) {
			delete(a.tracees, tid) // no longer ours to let go
		}
	}
	for deadline := time.Now().Add(10 * time.Second); len(a.tracees) > 0 && time.Now().Before(deadline); {
		if !a.step(true) {
			time.Sleep(time.Millisecond)
		}
	}
	close(a.done)
	for tid := range a.tracees {
		if alive(tid) {
			// Never end this thread while attached: its exit would kill
			// the tree (EXITKILL). A task that does not stop in 10 s is
			// in trouble anyway; the thread stays, parked, and the caller
			// goes on.
			select {}
		}
	}
	// Only dead tasks are left (a thread-group leader that exited before
	// its threads): this thread's end hands them to their parents.
}

// alive reports whether task tid exists and has not exited.
func alive(tid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", tid))
	if err != nil {
		return false
	}
	st, ok := proctree.Parse(tid, string(b))
	return ok && st.State != "Z" && st.State != "X"
}
