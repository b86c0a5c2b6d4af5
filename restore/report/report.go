// Package report carries what `gpuwarm restore` measured to the worker's
// mount daemon, which exports it with its own metrics: one scrape of the
// worker shows restores beside the cache that served them.
//
// A restore is a short-lived command, so it cannot be scraped itself, and
// it must not depend on the daemon being up. It writes one small JSON file
// per restore into a spool directory (/run/gpuwarm/restores: a tmpfs,
// emptied by a reboot); the daemon folds new files into its counters and
// histograms when scraped and deletes them. Without a daemon the spool is
// capped (MaxSpooled files, oldest dropped).
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DefaultDir is the spool directory.
const DefaultDir = "/run/gpuwarm/restores"

// MaxSpooled bounds the files left for a daemon; MaxFileSize one file.
const (
	MaxSpooled  = 1000
	MaxFileSize = 4 << 10
)

// Restore is one restore as the restore command saw it.
type Restore struct {
	Mode      string  `json:"mode"` // eager, prefill, lazy
	Container bool    `json:"container"`
	OK        bool    `json:"ok"`
	Running   float64 `json:"running_s"`
	Resident  float64 `json:"resident_s"`
	GPU       float64 `json:"gpu_s"`     // the CUDA restore
	GPUBytes  int64   `json:"gpu_bytes"` // GPU memory it put back
	// Weights the workload's library uploaded from the mount.
	WeightsBytes   int64   `json:"weights_bytes,omitempty"`
	WeightsSeconds float64 `json:"weights_s,omitempty"`
	LazyBytes      int64   `json:"lazy_bytes"`
	Faults         int64   `json:"lazy_faults"`
	At             int64   `json:"at"` // unix nanoseconds
}

// Write spools r into dir.
func Write(dir string, r Restore) error {
	if r.At == 0 {
		r.At = time.Now().UnixNano()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("%020d-%d.json", r.At, os.Getpid())
	tmp := filepath.Join(dir, "."+name)
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	prune(dir)
	return nil
}

// prune drops the oldest files beyond MaxSpooled.
func prune(dir string) {
	names := spooled(dir)
	for i := 0; i+MaxSpooled < len(names); i++ {
		os.Remove(filepath.Join(dir, names[i]))
	}
}

func spooled(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".json") && !strings.HasPrefix(n, ".") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// Collect reads and deletes the spooled restores, oldest first. Files that
// do not parse are deleted and counted in bad.
func Collect(dir string) (rs []Restore, bad int, err error) {
	for _, n := range spooled(dir) {
		p := filepath.Join(dir, n)
		b, err := readSmall(p)
		os.Remove(p)
		if err != nil {
			bad++
			continue
		}
		var r Restore
		if json.Unmarshal(b, &r) != nil || r.Mode == "" {
			bad++
			continue
		}
		rs = append(rs, r)
	}
	return rs, bad, nil
}

func readSmall(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, MaxFileSize+1)
	n, _ := f.Read(b)
	if n > MaxFileSize {
		return nil, errors.New("too large")
	}
	return b[:n], nil
}
