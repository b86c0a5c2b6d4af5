package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

func init() { sections = append(sections, section{"metrics", benchMetrics}) }

// benchMetrics: what metrics cost the mount. Two daemons over one store,
// one with --metrics-addr and a scraper asking every second (Prometheus
// asks every 15-60 s), one without; hot (page cache) and warm (the disk
// tier, page cache dropped) sequential and random reads of the mount
// section's files, alternating between the two, best of 5 each.
func benchMetrics(dir string) error {
	src := filepath.Join(dir, "src")
	files, sizes, total, err := mountFiles(src)
	if err != nil {
		return err
	}
	storeDir := filepath.Join(dir, "store")
	if _, err := packJSON(storeDir, src, "data"); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	off, err := startMount(storeDir, filepath.Join(dir, "off"), filepath.Join(dir, "cache-off"))
	if err != nil {
		return err
	}
	defer off.stop()
	on, err := startMount(storeDir, filepath.Join(dir, "on"), filepath.Join(dir, "cache-on"), "--metrics-addr", addr)
	if err != nil {
		return err
	}
	defer on.stop()
	stop := make(chan struct{})
	defer close(stop)
	scrapes := 0
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					scrapes++
				}
			}
		}
	}()
	paths := func(m *mountProc) []string { return under(filepath.Join(m.dir, "data"), files) }
	seq := func(m *mountProc) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			return bu.Time(func() error { _, err := bu.SeqRead(paths(m)); return err })
		}
	}
	rnd := func(m *mountProc) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			return bu.Time(func() error { return bu.RandRead(paths(m), sizes, 20000) })
		}
	}
	// Fill both: every chunk in each cache, assembled files written.
	for _, m := range []*mountProc{off, on} {
		if _, err := seq(m)(); err != nil {
			return err
		}
		m.waitIdle(time.Minute)
	}
	dropped := func(f func() (time.Duration, error)) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			if err := bu.DropCaches(); err != nil {
				return 0, err
			}
			return f()
		}
	}
	mb := float64(total) / 1e6
	var rows []bu.Row
	for _, c := range []struct {
		name   string
		a, b   func() (time.Duration, error)
		random bool
	}{
		{"hot sequential", seq(off), seq(on), false},
		{"hot random 4 KiB", rnd(off), rnd(on), true},
		{"warm sequential (disk tier)", dropped(seq(off)), dropped(seq(on)), false},
		{"warm random 4 KiB (disk tier)", dropped(rnd(off)), dropped(rnd(on)), true},
	} {
		a, b, err := alternate(7, c.a, c.b)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		val := func(d time.Duration) (float64, string) {
			if c.random {
				return 20000 / d.Seconds(), "reads/s"
			}
			return mb / d.Seconds(), "MB/s"
		}
		va, unit := val(a)
		vb, _ := val(b)
		rows = append(rows, bu.Row{Name: c.name + ", metrics off", Value: va, Unit: unit},
			bu.Row{Name: c.name + ", metrics on, scraped", Value: vb, Unit: unit, Baseline: c.name + ", metrics off", Goal: ">= 0.98x"})
	}
	bu.Table(os.Stdout, fmt.Sprintf("mount with and without metrics (%.0f MB in %d files; %d scrapes), best of 7 alternating", mb, len(files), scrapes), rows)
	return nil
}
