package s3store

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/storetest"
	"github.com/gpuwarm/gpuwarm/testing/s3server"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func server(t *testing.T) *s3server.Server {
	t.Helper()
	if _, err := s3server.Binary(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	s, err := s3server.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

func open(t *testing.T, srv *s3server.Server, bucket, prefix string) *Store {
	t.Helper()
	cfg, err := ParseURL(srv.URL(bucket, prefix))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Creds = credentials.NewStaticV4(s3server.AccessKey, s3server.SecretKey, "")
	cfg.Timeout = 5 * time.Second
	cfg.PartSize = 5 << 20
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, "gwbucket"); err != nil {
		t.Fatal(err)
	}
	t.Run("prefix", func(t *testing.T) { storetest.Run(t, open(t, srv, "gwbucket", "fleet/a")) })
	t.Run("no-prefix", func(t *testing.T) { storetest.Run(t, open(t, srv, "gwbucket", "")) })
	t.Run("retrying", func(t *testing.T) {
		storetest.Run(t, store.WithRetry(open(t, srv, "gwbucket", "fleet/b"), store.RetryPolicy{}))
	})
}

func TestMultipartUpload(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	srv.CreateBucket(ctx, "gwbucket")
	s := open(t, srv, "gwbucket", "p")
	big := make([]byte, 23<<20) // five 5 MiB parts, uploaded in parallel
	r := rand.New(rand.NewPCG(1, 1))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	h := store.H(store.Manifest, digest.Of(big))
	if err := s.Put(ctx, h, big); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, h, 0, -1)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("multipart round trip: %d bytes, %v", len(got), err)
	}
	got, err = s.Get(ctx, h, 7<<20, 100)
	if err != nil || !bytes.Equal(got, big[7<<20:7<<20+100]) {
		t.Fatalf("ranged get across parts: %v", err)
	}
}

func TestClearErrors(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	srv.CreateBucket(ctx, "gwbucket")
	cfg, _ := ParseURL(srv.URL("gwbucket", ""))
	cfg.Creds = credentials.NewStaticV4(s3server.AccessKey, "wrong-secret", "")
	_, err := Open(ctx, cfg)
	if err == nil || !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), srv.Endpoint) || !strings.Contains(err.Error(), `"gwbucket"`) {
		t.Fatalf("wrong credentials: want a permanent error naming endpoint and bucket, got %v", err)
	}
	cfg, _ = ParseURL(srv.URL("missing-bucket", ""))
	cfg.Creds = credentials.NewStaticV4(s3server.AccessKey, s3server.SecretKey, "")
	_, err = Open(ctx, cfg)
	if err == nil || !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "missing-bucket") || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing bucket: got %v", err)
	}
	for _, bad := range []string{"s3://", "s3:///x", "http://b/p", "s3://b/p?path-style=maybe"} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
}

func TestServerDownRetriesThenRecovers(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	srv.CreateBucket(ctx, "gwbucket")
	raw := open(t, srv, "gwbucket", "")
	s := store.WithRetry(raw, store.RetryPolicy{Attempts: 3, Base: 20 * time.Millisecond})
	data := []byte("hello fleet")
	h := store.H(store.Chunk, digest.Of(data))
	if err := s.Put(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	start := time.Now()
	_, err := s.Get(ctx, h, 0, -1)
	if err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get with the server down: %v", err)
	}
	if time.Since(start) < 20*time.Millisecond {
		t.Fatalf("no backoff between retries (%v)", time.Since(start))
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, h, 0, -1)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after restart: %q, %v", got, err)
	}
}
