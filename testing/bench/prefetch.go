package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

func init() { sections = append(sections, section{"prefetch", benchPrefetch}) }

const pyProg = `import json, email.parser, http.client, asyncio, decimal, sqlite3, unittest, argparse, logging, xml.etree.ElementTree, csv, zipfile, tarfile, hashlib, ssl, urllib.request, multiprocessing, concurrent.futures, dataclasses, typing, pathlib, shutil, statistics, fractions, difflib, pickle, sysconfig, pydoc, doctest, smtplib, imaplib, ftplib, xmlrpc.client, wsgiref.simple_server`

// benchPrefetch: cold start of python3 importing much of its standard
// library from the mount over a simulated remote store (2 ms a request,
// 1 GB/s): without a profile, with one, and with a warm cache.
func benchPrefetch(dir string) error {
	src := filepath.Join(dir, "src")
	py := "/usr/bin/python3"
	stdlibOut, err := exec.Command(py, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])").Output()
	if err != nil {
		return err
	}
	stdlib := string(stdlibOut[:len(stdlibOut)-1])
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	os.MkdirAll(filepath.Join(src, "lib"), 0o755)
	real, _ := filepath.EvalSymlinks(py)
	for _, args := range [][]string{{"cp", "-a", real, filepath.Join(src, "bin/python3")}, {"cp", "-a", stdlib, filepath.Join(src, "lib")}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
	}
	exec.Command(filepath.Join(src, "bin/python3"), "-I", "-m", "compileall", "-q", filepath.Join(src, "lib")).Run()
	storeDir := filepath.Join(dir, "store")
	if _, err := packJSON(storeDir, src, "py"); err != nil {
		return err
	}
	run := func(root string) (time.Duration, error) {
		return bu.Time(func() error {
			out, err := exec.Command(filepath.Join(root, "bin/python3"), "-I", "-c", pyProg).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	}
	recMnt := filepath.Join(dir, "rec")
	if out, err := bu.Run(bu.Gpuwarm(), "record", "--tag", "py", "--mount", recMnt, "--store", storeDir, "--",
		"sh", "-c", "$GPUWARM_IMAGE/bin/python3 -I -c '"+pyProg+"'"); err != nil {
		return fmt.Errorf("record: %v %s", err, out)
	}
	showOut, err := bu.Run(bu.Gpuwarm(), "profile", "show", "py", "--store", storeDir, "--json")
	if err != nil {
		return err
	}
	var show struct{ Bytes int64 }
	json.Unmarshal([]byte(showOut), &show)
	const latency, bandwidth = 2 * time.Millisecond, 1e9
	url := fmt.Sprintf("%s?sim-latency=%s&sim-bandwidth=%.0f", storeDir, latency, bandwidth)
	mnt := filepath.Join(dir, "mnt")
	var rows []bu.Row
	variant := func(name string, prefetch bool, i int) (time.Duration, *mountProc, error) {
		extra := []string{}
		if !prefetch {
			extra = append(extra, "--no-prefetch")
		}
		m, err := startMount(url, mnt, filepath.Join(dir, fmt.Sprintf("cache-%d", i)), extra...)
		if err != nil {
			return 0, nil, err
		}
		bu.DropCaches()
		d, err := run(filepath.Join(mnt, "py"))
		if err != nil {
			m.stop()
			return 0, nil, err
		}
		return d, m, nil
	}
	without, m, err := variant("without", false, 1)
	if err != nil {
		return err
	}
	m.stop()
	with, m, err := variant("with", true, 2)
	if err != nil {
		return err
	}
	if st, err := os.ReadFile(filepath.Join(mnt, ".stats")); err == nil {
		var s struct {
			Fetches  int64
			Prefetch map[string]struct{ Chunks, Fetched, Touched, Hits, Misses int64 }
		}
		json.Unmarshal(st, &s)
		for _, r := range s.Prefetch {
			fmt.Printf("with profile: %d store reads; replay fetched %d of %d chunks, %d of %d touched chunks were in ahead of the reader\n",
				s.Fetches, r.Fetched, r.Chunks, r.Hits, r.Touched)
		}
	}
	bu.DropCaches()
	warm, err := run(filepath.Join(mnt, "py"))
	m.stop()
	if err != nil {
		return err
	}
	floor := max(warm.Seconds(), float64(show.Bytes)/bandwidth)
	rows = append(rows,
		bu.Row{Name: "cold, no profile", Value: without.Seconds() * 1000, Unit: "ms", Baseline: "floor max(warm, bytes/bandwidth)"},
		bu.Row{Name: "cold, with profile", Value: with.Seconds() * 1000, Unit: "ms", Baseline: "floor max(warm, bytes/bandwidth)", Goal: "<= 1.3x floor, >= 3x faster than no profile"},
		bu.Row{Name: "warm cache", Value: warm.Seconds() * 1000, Unit: "ms", Baseline: "floor max(warm, bytes/bandwidth)"},
		bu.Row{Name: "floor max(warm, bytes/bandwidth)", Value: floor * 1000, Unit: "ms"},
		bu.Row{Name: "speed-up of the profile (no profile / with)", Value: without.Seconds() / with.Seconds(), Unit: "x"})
	bu.Table(os.Stdout, fmt.Sprintf("prefetch: python3 importing its stdlib over a simulated store (%v/request, %.0f GB/s; profile %.1f MB)", latency, bandwidth/1e9, float64(show.Bytes)/1e6), rows)
	return nil
}
