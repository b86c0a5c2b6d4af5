// Command gpuwarm-workload is a test workload with an expensive start: it
// builds a few hundred MB of deterministic state, then answers requests on
// stdin/stdout, so that a test can check that a restored copy holds exactly
// the memory the original had.
//
// Protocol (one line each way): "checksum" -> hex SHA-256 of the state,
// "ping" -> "pong", "pid" -> the pid it sees, "exit" -> exits. At start it
// prints "ready <checksum> <build seconds>". When stdin ends it keeps
// running until it is killed.
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/signal"
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
	fmt.Fprintf(out, "ready %s %.3f\n", st.Checksum(), st.BuildSeconds)
	out.Flush()
	for in.Scan() {
		reply, quit := st.Handle(in.Text())
		fmt.Fprintln(out, reply)
		out.Flush()
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
