package container

import (
	"archive/tar"
	"bytes"
	"fmt"
	"sync"
)

// A restore applies its snapshot's writable layer before the container
// can start; a Python workload's layer is mostly thousands of small
// bytecode files, each an open, write, close, chown, chmod and utimes.
// ApplyDiff reads the tar in order (directories, whiteouts, links and the
// checks that keep every write inside the layer stay there) and hands
// small regular files, read whole, to a few writers.
const (
	pooledFileMax = 1 << 20 // larger files are written in order, streamed
	poolWriters   = 8
	poolQueue     = 64 // files read ahead of the writers: at most 64 MiB
)

type fileJob struct {
	dst, name string
	data      []byte
	hdr       *tar.Header
	mode      uint32
}

type filePool struct {
	jobs    chan fileJob
	writers sync.WaitGroup
	pending sync.WaitGroup
	mu      sync.Mutex
	err     error
}

func newFilePool() *filePool {
	p := &filePool{jobs: make(chan fileJob, poolQueue)}
	for range poolWriters {
		p.writers.Add(1)
		go func() {
			defer p.writers.Done()
			for j := range p.jobs {
				p.fail(j.write())
				p.pending.Done()
			}
		}()
	}
	return p
}

func (j fileJob) write() error {
	if err := writeFile(j.dst, bytes.NewReader(j.data), int64(len(j.data))); err != nil {
		return fmt.Errorf("%s: %w", j.name, err)
	}
	return setAttrs(j.dst, j.name, j.hdr, j.mode)
}

func (p *filePool) fail(err error) {
	if err == nil {
		return
	}
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

func (p *filePool) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// add queues a file; it returns a writer's earlier failure instead.
func (p *filePool) add(j fileJob) error {
	if err := p.failed(); err != nil {
		return err
	}
	p.pending.Add(1)
	p.jobs <- j
	return nil
}

// wait returns once every queued file is written, with the first failure.
func (p *filePool) wait() error {
	p.pending.Wait()
	return p.failed()
}

// close stops the writers after the queued files.
func (p *filePool) close() error {
	close(p.jobs)
	p.writers.Wait()
	return p.failed()
}
