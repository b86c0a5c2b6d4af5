package main

import (
	"fmt"
	"os"
	"path/filepath"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
	"github.com/gpuwarm/gpuwarm/testing/s3server"
)

func init() { sections = append(sections, section{"s3", benchS3}) }

// benchS3 compares pack and cold-read throughput against a local S3 server
// (versitygw on 127.0.0.1) with the file store, in one run.
func benchS3(dir string) error {
	srv, err := s3server.Start(filepath.Join(dir, "s3"))
	if err != nil {
		return err
	}
	defer srv.Stop()
	if err := srv.CreateBucket(ctxBG(), "bench"); err != nil {
		return err
	}
	srv.SetEnv()
	src := filepath.Join(dir, "src")
	var files []string
	size := int64(256 * float64(1<<20) * *scale)
	if err := bu.WriteRandomFile(filepath.Join(src, "model.bin"), size, 7); err != nil {
		return err
	}
	files = append(files, "model.bin")
	for i := 0; i < 100; i++ {
		name := fmt.Sprintf("lib/m%03d.py", i)
		if err := bu.WriteRandomFile(filepath.Join(src, name), 64<<10, uint64(100+i)); err != nil {
			return err
		}
		files = append(files, name)
	}
	total := size + 100*64<<10
	mb := float64(total) / 1e6
	var rows []bu.Row
	for _, backend := range []struct{ name, url string }{
		{"file store", filepath.Join(dir, "store")},
		{"S3 (versitygw, loopback)", srv.URL("bench", "p")},
	} {
		bu.DropCaches()
		res, err := packJSON(backend.url, src, "b")
		if err != nil {
			return err
		}
		rows = append(rows, bu.Row{Name: "pack, " + backend.name, Value: res["mb_per_s"].(float64), Unit: "MB/s", Baseline: "pack, file store"})
		mnt := filepath.Join(dir, "mnt")
		m, err := startMount(backend.url, mnt, filepath.Join(dir, "cache-"+backend.name[:2]))
		if err != nil {
			return err
		}
		bu.DropCaches()
		abs := make([]string, len(files))
		for i, f := range files {
			abs[i] = filepath.Join(mnt, "b", f)
		}
		d, err := bu.Time(func() error { _, err := bu.SeqRead(abs); return err })
		m.stop()
		if err != nil {
			return err
		}
		rows = append(rows, bu.Row{Name: "cold read, " + backend.name, Value: mb / d.Seconds(), Unit: "MB/s", Baseline: "cold read, file store"})
	}
	bu.Table(os.Stdout, fmt.Sprintf("S3 vs file store: %.0f MB (one %.0f MB file, 100 x 64 KiB)", mb, float64(size)/1e6), rows)
	return nil
}
