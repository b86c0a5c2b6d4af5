// Package filestore is the embedded default store: a directory on a local or
// shared filesystem. Objects are files, written to a temporary name, synced
// and renamed into place, so a crash never leaves a partial object under its
// final name.
//
// Layout: ROOT/chunks/ab/abcd…, ROOT/manifests/…, ROOT/profiles/…,
// ROOT/tags/NAME, ROOT/locks/NAME, ROOT/tmp/ for writes in flight.
package filestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"

	"github.com/gpuwarm/gpuwarm/store"
)

// Store is a directory store.
type Store struct {
	root string
	seq  atomic.Uint64
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the store rooted at dir.
func Open(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	for _, k := range store.Kinds {
		if err := os.MkdirAll(filepath.Join(abs, string(k)), 0o755); err != nil {
			return nil, fmt.Errorf("file store %s: %w", abs, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(abs, "tmp"), 0o755); err != nil {
		return nil, fmt.Errorf("file store %s: %w", abs, err)
	}
	return &Store{root: abs}, nil
}

func (s *Store) Location() string { return "file://" + s.root }

func (s *Store) Close() error { return nil }

func (s *Store) path(h store.Handle) (string, error) {
	if err := h.Validate(); err != nil {
		return "", err
	}
	if h.Kind == store.Chunk {
		return filepath.Join(s.root, string(h.Kind), h.Name[:2], h.Name), nil
	}
	return filepath.Join(s.root, string(h.Kind), h.Name), nil
}

func (s *Store) Put(ctx context.Context, h store.Handle, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := s.path(h)
	if err != nil {
		return err
	}
	if h.Kind.Content() {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
	}
	tmp := filepath.Join(s.root, "tmp", strconv.Itoa(os.Getpid())+"."+strconv.FormatUint(s.seq.Add(1), 10))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("put %s: %w", h, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
		if errors.Is(err, fs.ErrNotExist) {
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.Rename(tmp, p)
			}
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", h, err)
	}
	return nil
}

func (s *Store) Get(ctx context.Context, h store.Handle, off, length int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := s.path(h)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, wrap(h, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, wrap(h, err)
	}
	size := st.Size()
	if off < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", h, off)
	}
	if off > size {
		off = size
	}
	if length < 0 || off+length > size {
		length = size - off
	}
	buf := make([]byte, length)
	if _, err := f.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF) && length == 0) {
		return nil, wrap(h, err)
	}
	return buf, nil
}

func (s *Store) Stat(ctx context.Context, h store.Handle) (store.Info, error) {
	p, err := s.path(h)
	if err != nil {
		return store.Info{}, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return store.Info{}, wrap(h, err)
	}
	return store.Info{Name: h.Name, Size: st.Size(), ModTime: st.ModTime()}, nil
}

func (s *Store) List(ctx context.Context, k store.Kind, fn func(store.Info) error) error {
	if !k.Valid() {
		return fmt.Errorf("store: unknown kind %q", k)
	}
	dir := filepath.Join(s.root, string(k))
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			names = append(names, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", k, err)
	}
	sort.Strings(names)
	for _, p := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		st, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", k, err)
		}
		if err := fn(store.Info{Name: filepath.Base(p), Size: st.Size(), ModTime: st.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) Delete(ctx context.Context, h store.Handle) error {
	p, err := s.path(h)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return wrap(h, err)
	}
	return nil
}

func wrap(h store.Handle, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", h, store.ErrNotFound)
	}
	return fmt.Errorf("%s: %w", h, err)
}
