// Package storeopen opens a store from a URL: a path or file://PATH for the
// embedded directory store, s3://BUCKET/PREFIX for object storage.
package storeopen

import (
	"context"
	"fmt"
	neturl "net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
	"github.com/gpuwarm/gpuwarm/manifest/store/s3store"
	"github.com/gpuwarm/gpuwarm/manifest/store/simstore"
)

// Default is the store used when none is configured.
const Default = "file:///var/lib/gpuwarm/store"

// Open opens the store at url. A file store URL may simulate a remote
// store for tests and benchmarks: file:///dir?sim-latency=2ms&sim-bandwidth=1e9
// (bytes per second).
func Open(ctx context.Context, url string) (store.Store, error) {
	return open(ctx, url, true)
}

// OpenExisting opens the store at url for commands that only read it: a
// file store that does not exist is an error, and nothing is created.
func OpenExisting(ctx context.Context, url string) (store.Store, error) {
	return open(ctx, url, false)
}

func open(ctx context.Context, url string, create bool) (store.Store, error) {
	fileStore := filestore.Open
	if !create {
		fileStore = filestore.OpenExisting
	}
	if strings.TrimSpace(url) == "" {
		return nil, fmt.Errorf("empty store URL: use a directory (file:///var/lib/gpuwarm/store) or s3://bucket/prefix")
	}
	if base, q, ok := strings.Cut(url, "?"); ok && !strings.HasPrefix(url, "s3://") {
		v, err := neturl.ParseQuery(q)
		if err != nil {
			return nil, fmt.Errorf("store %q: %w", url, err)
		}
		lat, err := time.ParseDuration(v.Get("sim-latency"))
		if err != nil {
			return nil, fmt.Errorf("store %q: sim-latency must be a duration such as 2ms", url)
		}
		bw, err := strconv.ParseFloat(v.Get("sim-bandwidth"), 64)
		if err != nil {
			return nil, fmt.Errorf("store %q: sim-bandwidth must be bytes per second such as 1e9", url)
		}
		s, err := open(ctx, base, create)
		if err != nil {
			return nil, err
		}
		return simstore.New(s, lat, bw), nil
	}
	switch {
	case strings.HasPrefix(url, "file://"):
		return fileStore(strings.TrimPrefix(url, "file://"))
	case strings.HasPrefix(url, "/") || strings.HasPrefix(url, "."):
		return fileStore(url)
	case strings.HasPrefix(url, "s3://"):
		return openS3(ctx, url)
	}
	return nil, fmt.Errorf("store %q: use a directory (file:///var/lib/gpuwarm/store) or s3://bucket/prefix", url)
}

func openS3(ctx context.Context, url string) (store.Store, error) {
	cfg, err := s3store.ParseURL(url)
	if err != nil {
		return nil, err
	}
	s, err := s3store.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return store.WithRetry(s, store.RetryPolicy{Attempts: cfg.Retries}), nil
}
