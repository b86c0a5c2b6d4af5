// Package benchutil has the helpers the benchmark programs share: data
// generation, page-cache control, timing and a ratio table.
package benchutil

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/fusemagic"
)

// DropCaches empties the kernel page cache (root only), so that reads come
// from disk or from the FUSE daemon rather than from kernel memory.
func DropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

// WriteRandomFile writes size pseudo-random bytes (seeded) to p.
func WriteRandomFile(p string, size int64, seed uint64) error {
	return writeGenerated(p, size, seed, false)
}

// WriteBF16File writes size bytes distributed like bf16 weights: random
// mantissa bytes, sign-and-exponent bytes from a narrow range (a trained
// model's weights are small numbers of few exponents).
func WriteBF16File(p string, size int64, seed uint64) error {
	return writeGenerated(p, size, seed, true)
}

func writeGenerated(p string, size int64, seed uint64, bf16 bool) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 1<<20)
	for size > 0 {
		n := min(int64(len(buf)), size)
		for i := 0; i+8 <= int(n); i += 8 {
			v := r.Uint64()
			buf[i], buf[i+1], buf[i+2], buf[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
			buf[i+4], buf[i+5], buf[i+6], buf[i+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
			if bf16 {
				// High bytes: sign and exponent around 2^-6 .. 2^-9.
				for j := 1; j < 8; j += 2 {
					buf[i+j] = 0x3c + byte(v>>(8*j))%4 | byte(v>>(8*j+4))&0x80
				}
			}
		}
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		size -= n
	}
	return f.Close()
}

// WriteTextFile writes size bytes of seeded pseudo-text to p: words drawn
// from a small vocabulary, as source files and the like are, which zstd's
// fastest level shrinks about threefold.
func WriteTextFile(p string, size int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	words := make([]string, 4096)
	for i := range words {
		w := make([]byte, 2+r.IntN(9))
		for j := range w {
			w[j] = byte('a' + r.IntN(26))
		}
		words[i] = string(w)
	}
	b := make([]byte, 0, size+16)
	for int64(len(b)) < size {
		b = append(b, words[r.IntN(len(words))]...)
		if r.IntN(12) == 0 {
			b = append(b, '\n')
		} else {
			b = append(b, ' ')
		}
	}
	return os.WriteFile(p, b[:size], 0o644)
}

// The readers below use open(2), read(2) and close(2) directly, as a
// program's loader or interpreter does: os.File registers every file it
// opens with the runtime's poller, which succeeds for a FUSE file (the
// kernel answers poll for it) and fails for a local one, so the two would
// not be read the same way.

func openRead(p string) (int, error) {
	for {
		fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != syscall.EINTR {
			if err != nil {
				return -1, &os.PathError{Op: "open", Path: p, Err: err}
			}
			return fd, nil
		}
	}
}

// readAll reads fd to its end in reads of len(buf) bytes.
func readAll(fd int, p string, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return total, &os.PathError{Op: "read", Path: p, Err: err}
		}
		if n == 0 {
			return total, nil
		}
		total += int64(n)
	}
}

// SeqRead reads every file in 1 MiB reads and returns bytes read.
func SeqRead(files []string) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for _, p := range files {
		fd, err := openRead(p)
		if err != nil {
			return total, err
		}
		n, err := readAll(fd, p, buf)
		syscall.Close(fd)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// OpenClose opens and closes every file.
func OpenClose(files []string) error {
	for _, p := range files {
		fd, err := openRead(p)
		if err != nil {
			return err
		}
		syscall.Close(fd)
	}
	return nil
}

// openAll opens every file, returning those it opened before any error.
func openAll(files []string) ([]int, error) {
	fds := make([]int, 0, len(files))
	for _, p := range files {
		fd, err := openRead(p)
		if err != nil {
			return fds, err
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// ReadOpened opens every file, then times 1 MiB reads of them all, then
// closes them: SeqRead without the opens.
func ReadOpened(files []string) (time.Duration, error) {
	fds, err := openAll(files)
	defer closeAll(fds)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	for i, fd := range fds {
		if _, err := readAll(fd, files[i], buf); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// RandRead does n random 4 KiB preads over the files (fixed seed).
func RandRead(files []string, sizes []int64, n int) error {
	fds, err := openAll(files)
	defer closeAll(fds)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(42, 43))
	buf := make([]byte, 4096)
	for i := 0; i < n; i++ {
		k := r.IntN(len(files))
		if sizes[k] < 4096 {
			continue
		}
		off := r.Int64N(sizes[k]-4096) &^ 4095
		for {
			m, err := syscall.Pread(fds[k], buf, off)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return &os.PathError{Op: "pread", Path: files[k], Err: err}
			}
			if m != len(buf) {
				return fmt.Errorf("pread %s at %d: %d bytes of %d", files[k], off, m, len(buf))
			}
			break
		}
	}
	return nil
}

// Time runs f and returns its duration.
func Time(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

// Row is one line of a result table.
type Row struct {
	Name     string
	Value    float64
	Unit     string
	Baseline string // name of the row this is a ratio to
	Goal     string
}

// Table prints rows with their ratio to their baseline row.
func Table(w io.Writer, title string, rows []Row) {
	fmt.Fprintf(w, "\n== %s\n", title)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEASUREMENT\tVALUE\tRATIO\tGOAL")
	byName := map[string]Row{}
	for _, r := range rows {
		byName[r.Name] = r
	}
	for _, r := range rows {
		ratio := ""
		if b, ok := byName[r.Baseline]; ok && b.Value > 0 {
			ratio = fmt.Sprintf("%.2fx %s", r.Value/b.Value, b.Name)
		}
		fmt.Fprintf(tw, "%s\t%.1f %s\t%s\t%s\n", r.Name, r.Value, r.Unit, ratio, r.Goal)
	}
	tw.Flush()
}

// Gpuwarm returns the path of the gpuwarm binary (bin/gpuwarm or PATH).
func Gpuwarm() string {
	for _, p := range []string{"bin/gpuwarm", "../../bin/gpuwarm"} {
		if abs, err := filepath.Abs(p); err == nil {
			if _, err := os.Stat(abs); err == nil {
				return abs
			}
		}
	}
	if p, err := exec.LookPath("gpuwarm"); err == nil {
		return p
	}
	return "gpuwarm"
}

// Run runs a command and returns its combined output, failing loudly.
func Run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Settle waits, at most limit, until the gpuwarm mount at mnt has no
// background work left: no file assembly running and no fetched chunk
// waiting to be written to its disk tier. It returns how long that took
// and the bytes still queued (0 where the mount's stats cannot be read).
func Settle(mnt string, limit time.Duration) (time.Duration, int64) {
	start := time.Now()
	for {
		var s struct {
			Assembly struct{ Running int64 }
			Disk     struct{ Queued int64 }
		}
		b, err := os.ReadFile(filepath.Join(mnt, ".stats"))
		if err != nil || json.Unmarshal(b, &s) != nil {
			return time.Since(start), 0
		}
		if s.Assembly.Running == 0 && s.Disk.Queued == 0 || time.Since(start) > limit {
			return time.Since(start), s.Disk.Queued
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitMount waits until a FUSE filesystem is mounted at dir.
func WaitMount(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if fusemagic.IsFUSE(dir) {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no mount at %s after %v", dir, timeout)
}

// Pipes connect a test to a workload's stdin and stdout: the workload's
// ends are CIn and COut (close them with Child once it has started).
type Pipes struct {
	In   *os.File
	Out  *bufio.Reader
	CIn  *os.File
	COut *os.File
}

// NewPipes makes both pipes.
func NewPipes() *Pipes {
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	return &Pipes{In: inW, Out: bufio.NewReader(outR), CIn: inR, COut: outW}
}

// Child closes the workload's ends in this process.
func (p *Pipes) Child() { p.CIn.Close(); p.COut.Close() }

// ReadLine reads one line, waiting at most timeout.
func (p *Pipes) ReadLine(timeout time.Duration) (string, error) {
	type res struct {
		l   string
		err error
	}
	ch := make(chan res, 1)
	go func() { l, err := p.Out.ReadString('\n'); ch <- res{strings.TrimSpace(l), err} }()
	select {
	case r := <-ch:
		return r.l, r.err
	case <-time.After(timeout):
		return "", fmt.Errorf("no answer within %v", timeout)
	}
}

// Ask sends a request line and reads the answer.
func (p *Pipes) Ask(req string, timeout time.Duration) (string, error) {
	if _, err := p.In.Write([]byte(req + "\n")); err != nil {
		return "", err
	}
	return p.ReadLine(timeout)
}

// FUSEURingParam is the fuse module's switch for FUSE over io_uring.
const FUSEURingParam = "/sys/module/fuse/parameters/enable_uring"

// SetFUSEURing turns FUSE over io_uring on or off for new connections and
// returns what puts the switch back as it was. An error says this kernel
// has no such switch, or that it cannot be set (not root).
func SetFUSEURing(on bool) (restore func(), err error) {
	old, err := os.ReadFile(FUSEURingParam)
	if err != nil {
		return nil, fmt.Errorf("no FUSE over io_uring in this kernel (Linux 6.14+ with CONFIG_FUSE_IO_URING): %w", err)
	}
	was := strings.TrimSpace(string(old)) == "Y"
	if was == on {
		return func() {}, nil
	}
	val := map[bool]string{true: "1", false: "0"}
	if err := os.WriteFile(FUSEURingParam, []byte(val[on]), 0); err != nil {
		return nil, fmt.Errorf("cannot set %s: %w", FUSEURingParam, err)
	}
	return func() { os.WriteFile(FUSEURingParam, []byte(val[was]), 0) }, nil
}

// LockedBuffer is a bytes.Buffer safe to write from one goroutine (a
// daemon's output, a logger) while a test reads it from another.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *LockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}
