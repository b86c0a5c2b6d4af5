// Package s3store keeps a gpuwarm store in S3-compatible object storage (AWS
// S3, GCS's S3 interface, R2, MinIO, Ceph RGW, versitygw), so that a fleet of
// workers shares images, snapshots and profiles and each keeps only its cache.
//
// URL: s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path-style=true|false&retries=N&timeout=D]
//
// The endpoint may also come from GPUWARM_S3_ENDPOINT or AWS_ENDPOINT_URL.
// Credentials follow the standard chain: AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY (or MINIO_*), the shared credentials file
// (~/.aws/credentials, AWS_PROFILE), then the instance role (IMDS / ECS).
//
// Keys mirror the file store: PREFIX/chunks/ab/<digest>, PREFIX/manifests/…,
// PREFIX/tags/NAME. Objects over PartSize are uploaded as parallel multipart
// uploads. The client's own retries are off: wrap the store with
// store.WithRetry, which retries only what can succeed on retry.
package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Config describes an S3 store.
type Config struct {
	Bucket, Prefix string
	// Endpoint is a URL such as http://127.0.0.1:7070; empty means AWS.
	Endpoint  string
	Region    string
	PathStyle bool
	// Creds overrides the standard credential chain (tests).
	Creds *credentials.Credentials
	// MaxConns bounds connections to the endpoint (default 64).
	MaxConns int
	// Timeout bounds one request (default 60s).
	Timeout time.Duration
	// PartSize is the multipart threshold and part size (default 16 MiB).
	PartSize int64
	// Retries is how many times a transient failure is tried (default 5);
	// storeopen applies it through store.WithRetry.
	Retries int
}

// Store is an S3 store.
type Store struct {
	cfg    Config
	client *minio.Client
	core   minio.Core
	loc    string
}

var _ store.Store = (*Store)(nil)

// ParseURL reads an s3:// URL into a Config.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return Config{}, fmt.Errorf("store %q: want s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path-style=true]", raw)
	}
	cfg := Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
	q := u.Query()
	cfg.Endpoint = q.Get("endpoint")
	if cfg.Endpoint == "" {
		cfg.Endpoint = os.Getenv("GPUWARM_S3_ENDPOINT")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	cfg.Region = q.Get("region")
	if cfg.Region == "" {
		cfg.Region = os.Getenv("AWS_REGION")
	}
	if v := q.Get("retries"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return Config{}, fmt.Errorf("store %q: retries must be 1-100", raw)
		}
		cfg.Retries = n
	}
	if v := q.Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return Config{}, fmt.Errorf("store %q: timeout must be a duration such as 30s", raw)
		}
		cfg.Timeout = d
	}
	switch q.Get("path-style") {
	case "", "auto":
		cfg.PathStyle = cfg.Endpoint != "" // custom endpoints are usually path-style
	case "true", "1":
		cfg.PathStyle = true
	case "false", "0":
	default:
		return Config{}, fmt.Errorf("store %q: path-style must be true or false", raw)
	}
	return cfg, nil
}

// Open connects to the bucket and checks that it exists and that the
// credentials work, so that misconfiguration fails at once and clearly.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 64
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.PartSize <= 0 {
		cfg.PartSize = 16 << 20
	}
	host, secure := "s3.amazonaws.com", true
	if cfg.Endpoint != "" {
		eu, err := url.Parse(cfg.Endpoint)
		if err != nil || eu.Host == "" || (eu.Scheme != "http" && eu.Scheme != "https") {
			return nil, fmt.Errorf("s3 endpoint %q: want http://HOST:PORT or https://HOST", cfg.Endpoint)
		}
		host, secure = eu.Host, eu.Scheme == "https"
	}
	creds := cfg.Creds
	if creds == nil {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.EnvMinio{},
			&credentials.FileAWSCredentials{},
			&credentials.IAM{},
		})
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          cfg.MaxConns,
		MaxIdleConnsPerHost:   cfg.MaxConns,
		MaxConnsPerHost:       cfg.MaxConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: cfg.Timeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	client, err := minio.New(host, &minio.Options{
		Creds: creds, Secure: secure, Transport: tr, Region: cfg.Region,
		BucketLookup: lookup, MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", host, err)
	}
	s := &Store{cfg: cfg, client: client, core: minio.Core{Client: client}}
	s.loc = "s3://" + path.Join(cfg.Bucket, cfg.Prefix)
	if cfg.Endpoint != "" {
		s.loc += " at " + cfg.Endpoint
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	ok, err := client.BucketExists(cctx, cfg.Bucket)
	if err != nil {
		return nil, s.wrap("open", err)
	}
	if !ok {
		return nil, fmt.Errorf("%s: bucket %q does not exist: create it or fix the store URL: %w", s.loc, cfg.Bucket, store.ErrPermanent)
	}
	return s, nil
}

func (s *Store) Location() string { return s.loc }

func (s *Store) Close() error { return nil }

func (s *Store) key(h store.Handle) (string, error) {
	if err := h.Validate(); err != nil {
		return "", err
	}
	k := string(h.Kind) + "/" + h.Name
	if h.Kind == store.Chunk {
		k = string(h.Kind) + "/" + h.Name[:2] + "/" + h.Name
	}
	if s.cfg.Prefix != "" {
		k = s.cfg.Prefix + "/" + k
	}
	return k, nil
}

func (s *Store) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.Timeout)
}

func (s *Store) Put(ctx context.Context, h store.Handle, data []byte) error {
	k, err := s.key(h)
	if err != nil {
		return err
	}
	if h.Kind.Content() {
		if ok, err := store.Has(ctx, s, h); err != nil {
			return err
		} else if ok {
			return nil
		}
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	_, err = s.client.PutObject(ctx, s.cfg.Bucket, k, bytesReader(data), int64(len(data)), minio.PutObjectOptions{
		ContentType: "application/octet-stream", PartSize: uint64(s.cfg.PartSize), NumThreads: 4,
	})
	if err != nil {
		return s.wrap("put "+h.String(), err)
	}
	return nil
}

func (s *Store) Get(ctx context.Context, h store.Handle, off, length int64) ([]byte, error) {
	k, err := s.key(h)
	if err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", h, off)
	}
	if length == 0 {
		if _, err := s.Stat(ctx, h); err != nil {
			return nil, err
		}
		return []byte{}, nil
	}
	var opts minio.GetObjectOptions
	switch {
	case length > 0:
		opts.SetRange(off, off+length-1)
	case off > 0:
		opts.SetRange(off, 0)
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	body, info, _, err := s.core.GetObject(ctx, s.cfg.Bucket, k, opts)
	if err != nil {
		if minio.ToErrorResponse(err).Code == "InvalidRange" {
			// Past the end: the contract clips to empty.
			if _, serr := s.Stat(ctx, h); serr != nil {
				return nil, serr
			}
			return []byte{}, nil
		}
		return nil, s.wrap("get "+h.String(), err)
	}
	defer body.Close()
	buf := make([]byte, 0, max(info.Size, 0))
	buf, err = readAll(body, buf)
	if err != nil {
		return nil, s.wrap("get "+h.String(), err)
	}
	if info.Size >= 0 && int64(len(buf)) != info.Size {
		return nil, fmt.Errorf("get %s from %s: short read, %d of %d bytes", h, s.loc, len(buf), info.Size)
	}
	return buf, nil
}

// GetInto reads the whole object into bufs straight from the response body.
func (s *Store) GetInto(ctx context.Context, h store.Handle, bufs ...[]byte) (int, error) {
	k, err := s.key(h)
	if err != nil {
		return 0, err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	body, _, _, err := s.core.GetObject(ctx, s.cfg.Bucket, k, minio.GetObjectOptions{})
	if err != nil {
		return 0, s.wrap("get "+h.String(), err)
	}
	defer body.Close()
	n := 0
	for _, b := range bufs {
		k, err := io.ReadFull(body, b)
		n += k
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, nil
		}
		if err != nil {
			return n, s.wrap("get "+h.String(), err)
		}
	}
	if k, _ := body.Read(make([]byte, 1)); k > 0 {
		return n, fmt.Errorf("get %s: %w", h, store.ErrShortBuffer)
	}
	return n, nil
}

func (s *Store) Stat(ctx context.Context, h store.Handle) (store.Info, error) {
	k, err := s.key(h)
	if err != nil {
		return store.Info{}, err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	info, err := s.client.StatObject(ctx, s.cfg.Bucket, k, minio.StatObjectOptions{})
	if err != nil {
		return store.Info{}, s.wrap("stat "+h.String(), err)
	}
	return store.Info{Name: h.Name, Size: info.Size, ModTime: info.LastModified}, nil
}

func (s *Store) List(ctx context.Context, k store.Kind, fn func(store.Info) error) error {
	if !k.Valid() {
		return fmt.Errorf("store: unknown kind %q", k)
	}
	prefix := string(k) + "/"
	if s.cfg.Prefix != "" {
		prefix = s.cfg.Prefix + "/" + prefix
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range s.client.ListObjects(lctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return s.wrap("list "+string(k), obj.Err)
		}
		name := path.Base(obj.Key)
		if (store.Handle{Kind: k, Name: name}).Validate() != nil {
			continue // not ours
		}
		if err := fn(store.Info{Name: name, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (s *Store) Delete(ctx context.Context, h store.Handle) error {
	k, err := s.key(h)
	if err != nil {
		return err
	}
	// S3 deletes of missing keys succeed; the contract reports them.
	if _, err := s.Stat(ctx, h); err != nil {
		return err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, k, minio.RemoveObjectOptions{}); err != nil {
		return s.wrap("delete "+h.String(), err)
	}
	return nil
}

// wrap maps S3 errors onto the store's: missing keys to ErrNotFound,
// credential and bucket problems to ErrPermanent with a message that says
// what to fix; everything else stays retryable.
func (s *Store) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s in %s: %w", op, s.loc, err)
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "NoSuchKey", "NotFound":
		return fmt.Errorf("%s in %s: %w", op, s.loc, store.ErrNotFound)
	case "NoSuchBucket":
		return fmt.Errorf("%s: bucket %q does not exist at %s: create it or fix the store URL: %w", op, s.cfg.Bucket, s.endpoint(), store.ErrPermanent)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return fmt.Errorf("%s: %s denied access to bucket %q (%s: %s): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the profile or the instance role: %w",
			op, s.endpoint(), s.cfg.Bucket, resp.Code, resp.Message, store.ErrPermanent)
	}
	if resp.StatusCode == http.StatusNotFound && resp.Code == "" {
		return fmt.Errorf("%s in %s: %w", op, s.loc, store.ErrNotFound)
	}
	return fmt.Errorf("%s in %s: %w", op, s.loc, err)
}

func (s *Store) endpoint() string {
	if s.cfg.Endpoint != "" {
		return s.cfg.Endpoint
	}
	return "s3.amazonaws.com"
}

type byteReader struct {
	b   []byte
	off int64
}

func bytesReader(b []byte) io.Reader { return &byteReader{b: b} }

func (r *byteReader) Read(p []byte) (int, error) {
	if r.off >= int64(len(r.b)) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += int64(n)
	return n, nil
}

func (r *byteReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r.b)) {
		return 0, io.EOF
	}
	n := copy(p, r.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (r *byteReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += r.off
	case io.SeekEnd:
		off += int64(len(r.b))
	}
	if off < 0 {
		return 0, errors.New("seek before start")
	}
	r.off = off
	return off, nil
}

func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
