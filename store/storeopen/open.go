// Package storeopen opens a store from a URL: a path or file://PATH for the
// embedded directory store, s3://BUCKET/PREFIX for object storage.
package storeopen

import (
	"context"
	"fmt"
	"strings"

	"github.com/gpuwarm/gpuwarm/store"
	"github.com/gpuwarm/gpuwarm/store/filestore"
	"github.com/gpuwarm/gpuwarm/store/s3store"
)

// Default is the store used when none is configured.
const Default = "file:///var/lib/gpuwarm/store"

// Open opens the store at url.
func Open(ctx context.Context, url string) (store.Store, error) {
	switch {
	case strings.HasPrefix(url, "file://"):
		return filestore.Open(strings.TrimPrefix(url, "file://"))
	case strings.HasPrefix(url, "/") || strings.HasPrefix(url, "."):
		return filestore.Open(url)
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
