package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"golang.org/x/sync/errgroup"
)

// The mount daemon's control socket: `gpuwarm cache stat|warm|evict` talk
// to a running daemon's block cache through it. It is a unix socket in the
// cache directory, root's alone (0600): whoever may use it may fill or
// empty the worker's cache. HTTP over it, JSON answers; warm streams one
// JSON progress line per step.

// controlSocket is the control socket of the cache in dir.
func controlSocket(cacheDir string) string { return filepath.Join(cacheDir, "control.sock") }

// cacheImageStat is what `cache stat` reports of one image.
type cacheImageStat struct {
	Image       string `json:"image"`
	Name        string `json:"name,omitempty"`
	Chunks      int    `json:"chunks"`
	Bytes       int64  `json:"bytes"`
	MemChunks   int    `json:"memory_chunks"`
	MemBytes    int64  `json:"memory_bytes"`
	DiskChunks  int    `json:"disk_chunks"`
	DiskBytes   int64  `json:"disk_bytes"`
	Missing     int64  `json:"missing_bytes"`
	ProfileOnly bool   `json:"profile_only,omitempty"`
}

// warmProgress is one line of a warm's stream.
type warmProgress struct {
	Done    int64   `json:"done_bytes"`
	Total   int64   `json:"total_bytes"`
	Fetched int64   `json:"fetched_bytes"` // from the store (the rest was cached)
	Seconds float64 `json:"seconds"`
	Final   bool    `json:"final,omitempty"`
	Error   string  `json:"error,omitempty"`
}

type evictResult struct {
	Image   string `json:"image,omitempty"`
	Chunks  int    `json:"evicted_chunks"`
	Bytes   int64  `json:"evicted_bytes"`
	Memory  bool   `json:"memory_emptied,omitempty"`
	Message string `json:"message,omitempty"`
}

type controlServer struct {
	bc *cache.Cache
	st store.Store
}

// serveControl listens on the cache directory's control socket until ctx
// ends.
func serveControl(ctx context.Context, cacheDir string, bc *cache.Cache, st store.Store) (func(), error) {
	path := controlSocket(cacheDir)
	os.Remove(path) // a dead daemon's
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	cs := &controlServer{bc: bc, st: st}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/stat", cs.stat)
	mux.HandleFunc("POST /v1/warm", cs.warm)
	mux.HandleFunc("POST /v1/evict", cs.evict)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	go srv.Serve(l)
	return func() { srv.Close(); os.Remove(path) }, nil
}

// chunksOf returns an image's distinct chunks, or its profile's with
// profileOnly.
func (cs *controlServer) chunksOf(ctx context.Context, name string, profileOnly bool) (digest.ID, []chunk.Ref, error) {
	id, refs, _, err := cs.contents(ctx, name, profileOnly)
	return id, refs, err
}

// contents is chunksOf plus the disk tier's whole-file copies the image's
// multi-chunk files may have (cache.FileID).
func (cs *controlServer) contents(ctx context.Context, name string, profileOnly bool) (digest.ID, []chunk.Ref, []digest.ID, error) {
	id, err := store.ResolveTag(ctx, cs.st, name)
	if err != nil {
		return digest.Zero, nil, nil, err
	}
	if profileOnly {
		p, err := prefetch.Load(ctx, cs.st, id)
		if err != nil {
			return id, nil, nil, err
		}
		if p == nil {
			return id, nil, nil, fmt.Errorf("%s has no prefetch profile (gpuwarm record or restore --record-profile makes one)", name)
		}
		refs := make([]chunk.Ref, 0, len(p.Entries))
		for _, e := range p.Entries {
			refs = append(refs, chunk.Ref{ID: e.ID, Size: e.Size})
		}
		return id, refs, nil, nil
	}
	ix, err := manifest.Load(ctx, cs.st, id)
	if err != nil {
		return id, nil, nil, err
	}
	seen := map[digest.ID]bool{}
	var refs []chunk.Ref
	var files []digest.ID
	for _, e := range ix.Entries {
		if len(e.Chunks) > 1 {
			files = append(files, cache.FileID(e.Chunks))
		}
		for _, c := range e.Chunks {
			if !seen[c.ID] {
				seen[c.ID] = true
				// The chunk, whole: a small file's piece is part of one.
				refs = append(refs, chunk.Ref{ID: c.ID, Size: c.Len(), Blocks: c.Blocks})
			}
		}
	}
	return id, refs, files, nil
}

func (cs *controlServer) stat(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("image")
	if name == "" {
		writeJSON(w, http.StatusOK, cs.bc.Stats())
		return
	}
	profile := r.URL.Query().Get("profile") == "1"
	id, refs, err := cs.chunksOf(r.Context(), name, profile)
	if err != nil {
		httpError(w, err)
		return
	}
	s := cacheImageStat{Image: id.String(), Name: name, Chunks: len(refs), ProfileOnly: profile}
	for _, c := range refs {
		inMem, onDisk := cs.bc.Residency(c.ID)
		s.Bytes += int64(c.Size)
		if inMem {
			s.MemChunks++
			s.MemBytes += int64(c.Size)
		}
		if onDisk {
			s.DiskChunks++
			s.DiskBytes += int64(c.Size)
		}
		if !inMem && !onDisk {
			s.Missing += int64(c.Size)
		}
	}
	writeJSON(w, http.StatusOK, s)
}

func (cs *controlServer) warm(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("image")
	_, refs, err := cs.chunksOf(r.Context(), name, r.URL.Query().Get("profile") == "1")
	if err != nil {
		httpError(w, err)
		return
	}
	var total int64
	for _, c := range refs {
		total += int64(c.Size)
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	send := func(p warmProgress) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(p)
		if flusher != nil {
			flusher.Flush()
		}
	}
	start := time.Now()
	before := cs.bc.Stats().FetchBytes
	var done atomic.Int64
	ctx := r.Context()
	// The progress writer ends before the handler returns, however it
	// returns: the response is not to be written after that.
	stop := make(chan struct{})
	var ticking sync.WaitGroup
	ticking.Add(1)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		ticking.Wait()
	}()
	go func() {
		defer ticking.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				send(warmProgress{Done: done.Load(), Total: total, Fetched: cs.bc.Stats().FetchBytes - before, Seconds: time.Since(start).Seconds()})
			case <-stop:
				return
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, c := range refs {
		g.Go(func() error {
			if err := cs.bc.WarmDisk(gctx, c.ID, c.Size, cache.Prefetch); err != nil {
				return fmt.Errorf("chunk %s: %w", c.ID.Short(), err)
			}
			done.Add(int64(c.Size))
			return nil
		})
	}
	err = g.Wait()
	cs.bc.Flush() // the disk tier's writes are done when warm says so
	close(stop)
	ticking.Wait()
	p := warmProgress{Done: done.Load(), Total: total, Fetched: cs.bc.Stats().FetchBytes - before, Seconds: time.Since(start).Seconds(), Final: true}
	if err != nil {
		p.Error = err.Error()
	}
	send(p)
}

func (cs *controlServer) evict(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("image")
	if name == "" {
		if r.URL.Query().Get("all") != "1" {
			httpError(w, errors.New("evict: name an image, or all=1"))
			return
		}
		// Everything: the memory tier at once, the disk tier entry by entry
		// of every tagged image (what a worker holds is theirs).
		tags, err := store.Tags(r.Context(), cs.st)
		if err != nil {
			httpError(w, err)
			return
		}
		var res evictResult
		for t := range tags {
			_, refs, files, err := cs.contents(r.Context(), t, false)
			if err != nil {
				continue
			}
			n, b := cs.evictRefs(refs, files)
			res.Chunks += n
			res.Bytes += b
		}
		cs.bc.DropMemory()
		res.Memory = true
		writeJSON(w, http.StatusOK, res)
		return
	}
	id, refs, files, err := cs.contents(r.Context(), name, false)
	if err != nil {
		httpError(w, err)
		return
	}
	n, b := cs.evictRefs(refs, files)
	writeJSON(w, http.StatusOK, evictResult{Image: id.String(), Chunks: n, Bytes: b})
}

// evictRefs drops chunks and whole-file copies; it counts the chunks.
func (cs *controlServer) evictRefs(refs []chunk.Ref, files []digest.ID) (n int, bytes int64) {
	// Writes to the disk tier still queued would put chunks back after.
	cs.bc.Flush()
	for _, c := range refs {
		if cs.bc.Evict(c.ID) {
			n++
			bytes += int64(c.Size)
		}
	}
	for _, f := range files {
		cs.bc.Evict(f)
	}
	return n, bytes
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, store.ErrNotFound) {
		code = http.StatusNotFound
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// controlClient talks to a daemon's control socket.
func controlClient(cacheDir string) (*http.Client, error) {
	path := controlSocket(cacheDir)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no running gpuwarm mount uses the cache in %s (no %s): start `gpuwarm mount`, or give its --cache-dir", cacheDir, path)
	}
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}, nil
}

func controlURL(path string, q url.Values) string {
	return (&url.URL{Scheme: "http", Host: "gpuwarm", Path: path, RawQuery: q.Encode()}).String()
}
