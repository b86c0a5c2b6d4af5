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
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/gpuwarm/gpuwarm/testing/workload"
)

func main() {
	cfg := workload.Config{MB: 256, Seed: 1}
	if err := cfg.Parse(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	st := workload.Build(cfg)
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
