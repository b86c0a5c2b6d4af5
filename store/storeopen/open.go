// Package storeopen opens a store from a URL: a path or file://PATH for the
// embedded directory store, s3://BUCKET/PREFIX for object storage.
package storeopen

import (
	"context"
	"fmt"
	"strings"

	"github.com/gpuwarm/gpuwarm/store"
	"github.com/gpuwarm/gpuwarm/store/filestore"
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

var openS3 = func(ctx context.Context, url string) (store.Store, error) {
	return nil, fmt.Errorf("store %q: this build has no S3 backend", url)
}
