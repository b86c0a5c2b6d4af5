// Package mountinfo reads /proc/PID/mountinfo (proc(5)): the mounts a
// process sees, each with its device, root, mount point and options.
package mountinfo

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Mount is one line: the fields gpuwarm uses.
type Mount struct {
	Dev     string // major:minor of the filesystem
	Root    string // the filesystem's directory mounted here
	Point   string // where, relative to the process's root
	Options string // the mount's own options (ro, nosuid, ...)
	FSType  string
	Source  string
	Super   string // the filesystem's options (size=, mode=, ...)
}

// ReadOnly reports whether the mount itself is read-only.
func (m Mount) ReadOnly() bool { return has(m.Options, "ro") }

func has(list, opt string) bool {
	for _, o := range strings.Split(list, ",") {
		if o == opt {
			return true
		}
	}
	return false
}

// Read parses a mountinfo file, such as /proc/self/mountinfo.
func Read(path string) ([]Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m, err := parse(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// parse parses one line.
func parse(line string) (Mount, error) {
	pre, post, ok := strings.Cut(line, " - ")
	a, b := strings.Fields(pre), strings.Fields(post)
	if !ok || len(a) < 6 || len(b) < 3 {
		return Mount{}, fmt.Errorf("malformed mountinfo line %q", line)
	}
	return Mount{Dev: a[2], Root: unescape(a[3]), Point: unescape(a[4]), Options: a[5],
		FSType: b[0], Source: unescape(b[1]), Super: b[2]}, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
