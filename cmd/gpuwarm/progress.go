package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/pack"
)

// progress is a line on the terminal rewritten in place: bytes done of
// the total, rate and time left. It says nothing when stderr is not a
// terminal or the command was asked to be quiet.
type progress struct {
	w          io.Writer
	label      string
	start, at  time.Time
	shown      bool
	lastDone   int64
	lastUpdate time.Time
}

func newProgress(_ io.Writer, quiet bool, label string) *progress {
	p := &progress{label: label, start: time.Now()}
	if !quiet && isTerminal(os.Stderr) {
		p.w = os.Stderr
	}
	return p
}

// update shows done of total bytes (total 0: unknown), at most 5 times a
// second.
func (p *progress) update(done, total int64) {
	if p.w == nil || time.Since(p.lastUpdate) < 200*time.Millisecond {
		return
	}
	p.lastUpdate = time.Now()
	p.lastDone = done
	fmt.Fprintf(p.w, "\r\033[K%s", p.line(done, total))
	p.shown = true
}

func (p *progress) line(done, total int64) string {
	secs := time.Since(p.start).Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(done) / secs
	}
	s := fmt.Sprintf("%s: %s", p.label, pack.HumanBytes(done))
	if total > 0 {
		s += fmt.Sprintf(" of %s (%.0f%%)", pack.HumanBytes(total), 100*float64(done)/float64(total))
	}
	s += fmt.Sprintf(", %s/s", pack.HumanBytes(int64(rate)))
	if total > 0 && rate > 0 && done < total {
		s += fmt.Sprintf(", %s left", time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second))
	}
	return s
}

// done clears the line.
func (p *progress) done() {
	if p.w != nil && p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
