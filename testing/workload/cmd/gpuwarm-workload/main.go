// Command gpuwarm-workload is a test workload with an expensive start: it
// builds a few hundred MB of deterministic state, then answers requests on
// stdin/stdout, so that a test can check that a restored copy holds exactly
// the memory the original had.
//
// Protocol (one line each way): "checksum" -> hex SHA-256 of the state,
// "sample K" -> hex SHA-256 of one 1 MiB block in K, read in a scattered
// order, "ping" -> "pong", "pid" -> the pid it sees, "exit" -> exits. At start it
// prints "ready <checksum> <build seconds>". When stdin ends it keeps
// running until it is killed; SIGUSR1 makes it print "checksum <hex>".
// With --spawn CMD it keeps starting CMD (space-separated words) every
// --spawn-every, keeping the 3 newest running: a tree whose processes come
// and go, before a snapshot and after a restore. With --listen ADDR it also
// answers the same protocol on TCP connections (SO_REUSEPORT, so that
// several restored copies on the host's network share the port).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/testing/workload"
)

func main() {
	cfg := workload.Config{MB: 256, Seed: 1}
	var spawn, listen string
	var every time.Duration
	fs := flag.NewFlagSet("gpuwarm-workload", flag.ContinueOnError)
	cfg.Flags(fs)
	fs.StringVar(&spawn, "spawn", "", "keep starting this `COMMAND` (space-separated words)")
	fs.DurationVar(&every, "spawn-every", 100*time.Millisecond, "how often --spawn starts its command")
	fs.StringVar(&listen, "listen", "", "also answer requests on TCP `ADDR`")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	st := workload.Build(cfg)
	if spawn != "" {
		go spawner(strings.Fields(spawn), every)
	}
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	if listen != "" {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1) })
			return serr
		}}
		// CRIU cannot dump Multipath TCP sockets, Go's default since 1.24.
		lc.SetMultipathTCP(false)
		l, err := lc.Listen(context.Background(), "tcp", listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			os.Exit(1)
		}
		go serveTCP(l, st)
	}
	// SIGUSR1 prints the checksum, for workloads restored without a pipe.
	usr := make(chan os.Signal, 1)
	signal.Notify(usr, syscall.SIGUSR1)
	go func() {
		for range usr {
			mu.Lock()
			fmt.Fprintf(out, "checksum %s\n", st.Checksum())
			out.Flush()
			mu.Unlock()
		}
	}()
	fmt.Fprintf(out, "ready %s %.3f\n", st.Checksum(), st.BuildSeconds)
	out.Flush()
	for in.Scan() {
		reply, quit := st.Handle(in.Text())
		mu.Lock()
		fmt.Fprintln(out, reply)
		out.Flush()
		mu.Unlock()
		if quit {
			return
		}
	}
	// No more requests (stdin closed or /dev/null): keep serving state, as a
	// server would, until killed.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

// spawner starts args every interval and keeps the 3 newest running.
func spawner(args []string, every time.Duration) {
	var live []*exec.Cmd
	for range time.Tick(every) {
		c := exec.Command(args[0], args[1:]...)
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "spawn:", err)
			continue
		}
		live = append(live, c)
		if len(live) > 3 {
			live[0].Process.Kill()
			live[0].Wait()
			live = live[1:]
		}
	}
}

// serveTCP answers the line protocol on each connection ("exit" ends the
// connection, not the process).
func serveTCP(l net.Listener, st *workload.State) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				reply, quit := st.Handle(sc.Text())
				if quit {
					return
				}
				if _, err := fmt.Fprintln(c, reply); err != nil {
					return
				}
			}
		}()
	}
}
