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
// and go, before a snapshot and after a restore.
package main

import (
	"bufio"
	"flag"
	"fmt"
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
	var spawn string
	var every time.Duration
	fs := flag.NewFlagSet("gpuwarm-workload", flag.ContinueOnError)
	cfg.Flags(fs)
	fs.StringVar(&spawn, "spawn", "", "keep starting this `COMMAND` (space-separated words)")
	fs.DurationVar(&every, "spawn-every", 100*time.Millisecond, "how often --spawn starts its command")
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
