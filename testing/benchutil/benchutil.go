// Package benchutil has the helpers the benchmark programs share: data
// generation, page-cache control, timing and a ratio table.
package benchutil

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// DropCaches empties the kernel page cache (root only), so that reads come
// from disk or from the FUSE daemon rather than from kernel memory.
func DropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

// WriteRandomFile writes size pseudo-random bytes (seeded) to p.
func WriteRandomFile(p string, size int64, seed uint64) error {
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
		}
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		size -= n
	}
	return f.Close()
}

// SeqRead reads every file in 1 MiB reads and returns bytes read.
func SeqRead(files []string) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return total, err
		}
		for {
			n, err := f.Read(buf)
			total += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Close()
				return total, err
			}
		}
		f.Close()
	}
	return total, nil
}

// RandRead does n random 4 KiB preads over the files (fixed seed).
func RandRead(files []string, sizes []int64, n int) error {
	fds := make([]*os.File, len(files))
	for i, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fds[i] = f
	}
	r := rand.New(rand.NewPCG(42, 43))
	buf := make([]byte, 4096)
	for i := 0; i < n; i++ {
		k := r.IntN(len(files))
		if sizes[k] < 4096 {
			continue
		}
		off := r.Int64N(sizes[k]-4096) &^ 4095
		if _, err := fds[k].ReadAt(buf, off); err != nil {
			return err
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

// WaitMount waits until a FUSE filesystem is mounted at dir.
func WaitMount(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err == nil && st.Type == 0x65735546 {
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
