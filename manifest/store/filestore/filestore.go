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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/gpuwarm/gpuwarm/internal/directio"
	"github.com/gpuwarm/gpuwarm/internal/rofile"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"golang.org/x/sys/unix"
)

// Store is a directory store.
type Store struct {
	root string
	seq  atomic.Uint64
	// noDirect is set once the filesystem refused O_DIRECT.
	noDirect atomic.Bool
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the store rooted at dir.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("file store: empty path: name a directory (file:///var/lib/gpuwarm/store)")
	}
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
	removeDeadWriters(filepath.Join(abs, "tmp"))
	return &Store{root: abs}, nil
}

// OpenExisting opens the store at dir for reading only: it creates nothing,
// and a directory that does not exist is an error (a read-only command
// pointed at a mistyped path must say so, not report an empty store).
func OpenExisting(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("file store: empty path: name a directory (file:///var/lib/gpuwarm/store)")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("no store at %s: %w (pack something into it first, or fix --store)", abs, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("no store at %s: not a directory (fix --store)", abs)
	}
	return &Store{root: abs}, nil
}

// removeDeadWriters deletes temporary files of writers that died (their
// PID prefix names no live process), such as a pack killed before its
// batch committed. Files of a reused PID survive until the next Open.
func removeDeadWriters(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		pid, _, ok := strings.Cut(e.Name(), ".")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil || n <= 0 {
			continue
		}
		if err := unix.Kill(n, 0); err == unix.ESRCH {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
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
	tmp := s.tmpName()
	err = s.writeFile(tmp, data, true)
	if err == nil {
		err = renameInto(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", h, err)
	}
	return nil
}

// tmpName is a new name under ROOT/tmp, prefixed with our PID so that Open
// can tell a dead writer's leftovers from a live one's writes.
func (s *Store) tmpName() string {
	return filepath.Join(s.root, "tmp", strconv.Itoa(os.Getpid())+"."+strconv.FormatUint(s.seq.Add(1), 10))
}

// renameInto moves tmp to p, creating p's directory if needed.
func renameInto(tmp, p string) error {
	err := os.Rename(tmp, p)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
			err = os.Rename(tmp, p)
		}
	}
	return err
}

// Batch returns a batch (store.Batch) whose objects are written unsynced
// to temporary files; Commit syncs the filesystem once, renames them all
// into place and syncs again. A crash before the first sync leaves only
// temporary files; after it, every renamed object is whole.
func (s *Store) Batch() store.Batch { return &batch{s: s} }

var _ store.Batcher = (*Store)(nil)

type batch struct {
	s       *Store
	mu      sync.Mutex
	pending [][2]string // temporary name, final name
}

func (b *batch) Put(ctx context.Context, h store.Handle, data []byte) error {
	if !h.Kind.Content() {
		return b.s.Put(ctx, h, data)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := b.s.path(h)
	if err != nil {
		return err
	}
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	tmp := b.s.tmpName()
	if err := b.s.writeFile(tmp, data, false); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", h, err)
	}
	b.mu.Lock()
	b.pending = append(b.pending, [2]string{tmp, p})
	b.mu.Unlock()
	return nil
}

func (b *batch) Commit(ctx context.Context) error {
	b.mu.Lock()
	pend := b.pending
	b.pending = nil
	b.mu.Unlock()
	if len(pend) == 0 {
		return nil
	}
	fail := func(err error, from int) error {
		for _, p := range pend[from:] {
			os.Remove(p[0])
		}
		return fmt.Errorf("commit %d objects to %s: %w", len(pend), b.s.Location(), err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err, 0)
	}
	if err := b.s.syncFS(); err != nil {
		return fail(err, 0)
	}
	for i, p := range pend {
		if err := renameInto(p[0], p[1]); err != nil {
			return fail(err, i)
		}
	}
	if err := b.s.syncFS(); err != nil {
		return fail(err, len(pend))
	}
	return nil
}

func (b *batch) Abort() {
	b.mu.Lock()
	pend := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, p := range pend {
		os.Remove(p[0])
	}
}

// syncFS makes everything written to the store's filesystem durable.
func (s *Store) syncFS() error {
	fd, err := unix.Open(s.root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: s.root, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return &os.PathError{Op: "syncfs", Path: s.root, Err: err}
	}
	return nil
}

// directMin is the smallest object written with O_DIRECT: a chunk written
// through the page cache costs a copy into freshly allocated cache pages,
// the largest cost of a pack, which has no use for those pages. Below it,
// a write through the page cache costs less than O_DIRECT's wait for the
// disk (small compressed chunks of text files: see docs/design.md).
const directMin = 1 << 20

// writeFile writes data to a new file at name, and syncs it if asked.
func (s *Store) writeFile(name string, data []byte, sync bool) error {
	if len(data) >= directMin && !s.noDirect.Load() {
		var err error
		if directio.IsAligned(data) {
			// The caller built data in an aligned buffer (pack does):
			// written in place, no copy.
			err = directio.WriteNew(name, data, 0o644, sync)
		} else {
			padded, done := directio.Pad(data)
			err = directio.WriteNew(name, padded[:len(data)], 0o644, sync)
			done()
		}
		if !errors.Is(err, syscall.EINVAL) {
			return err
		}
		// This filesystem does not do O_DIRECT (some FUSE and network
		// filesystems): write through the page cache from now on.
		s.noDirect.Store(true)
	}
	fd, err := unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	err = directio.WriteAll(fd, data)
	if err == nil && sync {
		err = unix.Fsync(fd)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return &os.PathError{Op: "write", Path: name, Err: err}
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
	f, err := rofile.Open(p)
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

// GetInto reads the whole object into bufs with preadv.
func (s *Store) GetInto(ctx context.Context, h store.Handle, bufs ...[]byte) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	p, err := s.path(h)
	if err != nil {
		return 0, err
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, wrap(h, &os.PathError{Op: "open", Path: p, Err: err})
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, wrap(h, err)
	}
	// The iovecs that the object fills, the last one cut to its end.
	var iov [][]byte
	left := st.Size
	for _, b := range bufs {
		if left <= 0 {
			break
		}
		b = b[:min(int64(len(b)), left)]
		iov = append(iov, b)
		left -= int64(len(b))
	}
	want := st.Size - left
	var n int64
	for n < want {
		k, err := unix.Preadv(fd, skipBytes(iov, n), n)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return int(n), wrap(h, err)
		}
		if k == 0 {
			return int(n), fmt.Errorf("get %s: %s shrank while being read", h, p)
		}
		n += int64(k)
	}
	if left > 0 {
		return int(n), fmt.Errorf("get %s: %d bytes: %w", h, st.Size, store.ErrShortBuffer)
	}
	return int(n), nil
}

// skipBytes is iov without its first n bytes.
func skipBytes(iov [][]byte, n int64) [][]byte {
	for len(iov) > 0 && n >= int64(len(iov[0])) {
		n -= int64(len(iov[0]))
		iov = iov[1:]
	}
	if len(iov) > 0 && n > 0 {
		iov = append([][]byte{iov[0][n:]}, iov[1:]...)
	}
	return iov
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
			if p == dir && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll // a store that never held this kind
			}
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
