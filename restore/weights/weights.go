// Package weights is gpuwarm's side of the weights protocol: a workload
// hands its weight tensors' GPU memory back before a snapshot, tells
// gpuwarm which bytes of which files on the mount they hold, and uploads
// them again after a restore. The snapshot then carries references to the
// weights image instead of the weights, and a restore feeds the upload from
// the worker's block cache (through the mount, every chunk verified) at the
// speed of pinned host-to-device copies instead of the CUDA driver's
// pageable restore of its host copy.
//
// The workload side is a small library (gpuwarm_weights.py beside this file,
// for PyTorch; any framework can speak the protocol). The split keeps the
// library small: it knows its tensors and how to free, allocate and fill
// them; gpuwarm decides when, resolves files to images, records the
// references, and refuses a restore whose references cannot be served.
//
// # Protocol (version 1)
//
// The workload's environment names a Unix socket path in GPUWARM_WEIGHTS.
// gpuwarm listens there only while it needs the workload: during a
// snapshot, and during a restore. The library holds no descriptor to gpuwarm
// otherwise — a connection open across the checkpoint could not be dumped —
// so it polls: every 10 ms it stats the path, and connects when a socket is
// there that it has not yet had a session with (a new listener is a new
// inode). One session per listener and process:
//
//	workload → {"version":1,"pid":P,"state":"resident"|"released","files":[PATH...],"bytes":N}
//	gpuwarm  → {"op":"release","files":{PATH:SOURCE...}}
//	workload → {"ok":true,"tensors":[{"name","file","offset","length","dtype","shape"}...],"bytes":N,"seconds":S}
//
//	gpuwarm  → {"op":"reload","files":{SOURCE:PATH_NOW...}}
//	workload → {"ok":true,"bytes":N,"seconds":S,"alloc_seconds":A,"moved":M}
//
//	gpuwarm  → {"op":"none"}      (nothing to do; the workload just closes)
//
// Messages are single lines of JSON. "files" in the hello are the weight
// files the workload registered, as it opened them. The release names, for
// each file gpuwarm can serve again, the path of the same bytes by image ID
// (MOUNT/by-id/ID/PATH), which no tag move changes; the workload checks each
// tensor's GPU bytes against that source before it frees them (a tensor that
// differs, or does not own its whole allocation, stays on the GPU and in the
// snapshot), and answers with the tensors it released: "file" is the source
// path, "offset" and "length" the bytes in it. A reload maps each source path
// to the path to read now. Replies with "ok":false carry "error". Until a
// reload completes, the library keeps the program from running on the
// released tensors (its ready() gate).
//
// gpuwarm accepts only peers, by their socket credentials, that are processes
// of the tree it snapshots or restores.
package weights

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EnvSocket names the environment variable that holds the socket path.
const EnvSocket = "GPUWARM_WEIGHTS"

// Version is the protocol version gpuwarm speaks.
const Version = 1

// Limits on what a peer may send.
const (
	maxLine    = 64 << 20
	maxTensors = 1 << 20
	maxName    = 4096
)

// Hello is the first message of a session, from the workload.
type Hello struct {
	Version int      `json:"version"`
	PID     int      `json:"pid"`   // in the workload's PID namespace
	State   string   `json:"state"` // "resident" or "released"
	Files   []string `json:"files"`
	Bytes   int64    `json:"bytes"`
}

// Tensor is one released tensor: Length bytes at Offset of File.
type Tensor struct {
	Name   string  `json:"name"`
	File   string  `json:"file"`
	Offset int64   `json:"offset"`
	Length int64   `json:"length"`
	Dtype  string  `json:"dtype,omitempty"`
	Shape  []int64 `json:"shape,omitempty"`
}

type request struct {
	Op    string            `json:"op"`
	Files map[string]string `json:"files,omitempty"`
}

// Reply is the workload's answer to a request.
type Reply struct {
	OK      bool     `json:"ok"`
	Error   string   `json:"error,omitempty"`
	Tensors []Tensor `json:"tensors,omitempty"`
	Bytes   int64    `json:"bytes"`
	Seconds float64  `json:"seconds"`
	// Kept says why tensors were not released (name: reason), for the log.
	Kept map[string]string `json:"kept,omitempty"`
	// AllocSeconds is the part of a reload spent allocating GPU memory.
	AllocSeconds float64 `json:"alloc_seconds,omitempty"`
	// PinnedSeconds is the part of a reload spent allocating the pinned
	// host memory its copies go through.
	PinnedSeconds float64 `json:"pinned_seconds,omitempty"`
	// Moved counts the tensors a reload placed at other GPU addresses than
	// they had before the release: code that captured their addresses
	// (CUDA graphs) would read freed memory.
	Moved int `json:"moved,omitempty"`
}

// ParseHello decodes and checks a hello line.
func ParseHello(line []byte) (*Hello, error) {
	var h Hello
	if err := json.Unmarshal(line, &h); err != nil {
		return nil, fmt.Errorf("weights: bad hello from the workload: %w", err)
	}
	if h.Version != Version {
		return nil, fmt.Errorf("weights: the workload's library speaks protocol version %d, this gpuwarm %d: use the gpuwarm_weights.py of this release", h.Version, Version)
	}
	if h.State != "resident" && h.State != "released" {
		return nil, fmt.Errorf("weights: bad hello: state %q", h.State)
	}
	if len(h.Files) > maxTensors || h.Bytes < 0 {
		return nil, errors.New("weights: bad hello: too many files or negative size")
	}
	for _, f := range h.Files {
		if err := checkPath(f); err != nil {
			return nil, fmt.Errorf("weights: bad hello: %w", err)
		}
	}
	return &h, nil
}

// ParseReply decodes and checks a reply line.
func ParseReply(line []byte) (*Reply, error) {
	var r Reply
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("weights: bad reply from the workload: %w", err)
	}
	if !r.OK {
		if r.Error == "" {
			r.Error = "no reason given"
		}
		return &r, nil
	}
	if len(r.Tensors) > maxTensors || r.Bytes < 0 {
		return nil, errors.New("weights: bad reply: too many tensors or negative size")
	}
	var sum int64
	for i, t := range r.Tensors {
		sum += t.Length
		if len(t.Name) > maxName || len(t.Dtype) > 64 || len(t.Shape) > 64 {
			return nil, fmt.Errorf("weights: bad reply: tensor %d: name, dtype or shape too long", i)
		}
		if err := checkPath(t.File); err != nil {
			return nil, fmt.Errorf("weights: bad reply: tensor %q: %w", t.Name, err)
		}
		if t.Offset < 0 || t.Length <= 0 || t.Offset > 1<<50 || t.Length > 1<<50 {
			return nil, fmt.Errorf("weights: bad reply: tensor %q: offset %d, length %d", t.Name, t.Offset, t.Length)
		}
	}
	if len(r.Tensors) > 0 && sum != r.Bytes {
		return nil, fmt.Errorf("weights: bad reply: the tensors hold %d bytes, the reply says %d", sum, r.Bytes)
	}
	return &r, nil
}

func checkPath(p string) error {
	if !filepath.IsAbs(p) || len(p) > maxName || strings.IndexByte(p, 0) >= 0 || filepath.Clean(p) != p {
		return fmt.Errorf("file %q is not a clean absolute path", p)
	}
	return nil
}

// maxSocketPath is the longest path a Unix socket address holds (sun_path,
// less its terminating NUL).
const maxSocketPath = 107

// Server listens at the socket path for the workload's libraries.
type Server struct {
	path string
	l    *net.UnixListener
	dir  *os.File // ListenIn's directory, open while the socket's name is
}

// Listen creates the socket at path (replacing a stale socket there: never
// another kind of file, nor a socket something listens on).
func Listen(path string) (*Server, error) {
	if err := checkPath(path); err != nil {
		return nil, fmt.Errorf("weights: socket: %w", err)
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("weights: socket path %s is %d bytes, a Unix socket's holds %d: point %s at a shorter path", path, len(path), maxSocketPath, EnvSocket)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("weights: socket directory: %w", err)
	}
	return listen(path, path)
}

// ListenIn creates the socket name in the directory dir (a container's,
// opened inside its root: the socket cannot land outside it whatever links
// the container holds), and closes dir with the server. shown names the
// socket in messages.
func ListenIn(dir *os.File, name, shown string) (*Server, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		dir.Close()
		return nil, fmt.Errorf("weights: socket name %q", name)
	}
	s, err := listen(fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), name), shown)
	if err != nil {
		dir.Close()
		return nil, err
	}
	s.dir = dir
	return s, nil
}

func listen(path, shown string) (*Server, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("weights: %s (from %s) exists and is not a socket: remove it or point %s elsewhere", shown, EnvSocket, EnvSocket)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("weights: something listens on %s (from %s) already: point %s elsewhere", shown, EnvSocket, EnvSocket)
		}
		os.Remove(path)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("weights: listen on %s: %w", shown, err)
	}
	l.SetUnlinkOnClose(true)
	// Peers are checked by their credentials, not by the file's mode: a
	// workload running as another user must be able to connect.
	os.Chmod(path, 0o666)
	return &Server{path: shown, l: l}, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops listening and removes the socket, so that no library connects
// again until the next listener.
func (s *Server) Close() error {
	err := s.l.Close()
	if s.dir != nil {
		s.dir.Close()
	}
	return err
}

// Peer is one workload process in session.
type Peer struct {
	PID   int // in gpuwarm's PID namespace
	Hello *Hello
	c     *net.UnixConn
	r     *bufio.Reader
}

// Accept waits for a library whose process passes want (by its credentials;
// others are turned away) and reads its hello.
func (s *Server) Accept(ctx context.Context, want func(pid int) bool) (*Peer, error) {
	for {
		if dl, ok := ctx.Deadline(); ok {
			s.l.SetDeadline(dl)
		}
		stop := context.AfterFunc(ctx, func() { s.l.SetDeadline(time.Unix(1, 0)) })
		c, err := s.l.AcceptUnix()
		stop()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, context.DeadlineExceeded
			}
			return nil, fmt.Errorf("weights: accept: %w", err)
		}
		pid, err := peerPID(c)
		if err != nil || (want != nil && !want(pid)) {
			c.Close()
			continue
		}
		p := &Peer{PID: pid, c: c, r: bufio.NewReaderSize(c, 64<<10)}
		line, err := p.readLine(ctx)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("weights: hello from process %d: %w", pid, err)
		}
		if p.Hello, err = ParseHello(line); err != nil {
			c.Close()
			return nil, fmt.Errorf("process %d: %w", pid, err)
		}
		return p, nil
	}
}

func peerPID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

func (p *Peer) readLine(ctx context.Context) ([]byte, error) {
	if dl, ok := ctx.Deadline(); ok {
		p.c.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { p.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var line []byte
	for {
		frag, err := p.r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > maxLine {
			return nil, fmt.Errorf("message over %d bytes", maxLine)
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) {
				return nil, errors.New("the workload closed the connection (did it die?)")
			}
			return nil, err
		}
	}
}

func (p *Peer) do(ctx context.Context, req request) (*Reply, error) {
	b, _ := json.Marshal(req)
	if _, err := p.c.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("weights: process %d: %w", p.PID, err)
	}
	if req.Op == "none" {
		return &Reply{OK: true}, nil
	}
	line, err := p.readLine(ctx)
	if err != nil {
		return nil, fmt.Errorf("weights: process %d, %s: %w", p.PID, req.Op, err)
	}
	r, err := ParseReply(line)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", p.PID, err)
	}
	if !r.OK {
		return r, fmt.Errorf("weights: process %d could not %s its weights: %s", p.PID, req.Op, r.Error)
	}
	return r, nil
}

// Release asks the workload to free the tensors it holds from the files in
// sources (as it opened them → the path of the same bytes by image ID).
func (p *Peer) Release(ctx context.Context, sources map[string]string) (*Reply, error) {
	r, err := p.do(ctx, request{Op: "release", Files: sources})
	if err != nil {
		return r, err
	}
	offered := make(map[string]bool, len(sources))
	for _, s := range sources {
		offered[s] = true
	}
	for _, t := range r.Tensors {
		if !offered[t.File] {
			return nil, fmt.Errorf("weights: process %d released tensor %q from %s, a file gpuwarm did not offer", p.PID, t.Name, t.File)
		}
	}
	return r, nil
}

// Reload asks the workload to allocate and fill its released tensors,
// reading each source path from paths[source] (the source itself if absent).
func (p *Peer) Reload(ctx context.Context, paths map[string]string) (*Reply, error) {
	return p.do(ctx, request{Op: "reload", Files: paths})
}

// Done ends a session with nothing to do.
func (p *Peer) Done(ctx context.Context) error {
	_, err := p.do(ctx, request{Op: "none"})
	p.Close()
	return err
}

// Close ends the session.
func (p *Peer) Close() error { return p.c.Close() }

// ThreadName is the name of the library's thread: a process with a thread
// of this name speaks the protocol.
const ThreadName = "gpuwarm-weights"

// Speaks reports whether pid runs the library (a thread named ThreadName).
func Speaks(pid int) bool {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/comm", pid, t.Name())); err == nil && strings.TrimSpace(string(b)) == ThreadName {
			return true
		}
	}
	return false
}

// SocketOf returns the socket path in pid's environment ("" if unset).
func SocketOf(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return ""
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, EnvSocket+"="); ok {
			return v
		}
	}
	return ""
}
