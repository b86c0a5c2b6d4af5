// Package workload is the state-building core of gpuwarm-workload, the test
// program whose memory a snapshot must carry exactly.
package workload

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config sizes the state.
type Config struct {
	MB   int
	Seed uint64
}

// Parse reads --mb and --seed.
func (c *Config) Parse(args []string) error {
	fs := flag.NewFlagSet("gpuwarm-workload", flag.ContinueOnError)
	c.Flags(fs)
	return fs.Parse(args)
}

// Flags defines --mb and --seed on fs.
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.IntVar(&c.MB, "mb", c.MB, "MB of state to build")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the state")
}

// State is the built state.
type State struct {
	blocks       [][]byte // 1 MiB each, so the heap holds many mappings
	BuildSeconds float64
}

// Build makes MB MiB of state. Each 4 KiB page is a SHA-256 chain seeded by
// its index: deterministic, incompressible, and slow enough that building
// it is an "expensive start".
func Build(c Config) *State {
	start := time.Now()
	s := &State{}
	var seed [16]byte
	for b := 0; b < c.MB; b++ {
		blk := make([]byte, 1<<20)
		for p := 0; p < len(blk); p += 32 {
			binary.LittleEndian.PutUint64(seed[:], c.Seed)
			binary.LittleEndian.PutUint64(seed[8:], uint64(b)<<20|uint64(p))
			sum := sha256.Sum256(seed[:])
			copy(blk[p:], sum[:])
		}
		s.blocks = append(s.blocks, blk)
	}
	s.BuildSeconds = time.Since(start).Seconds()
	return s
}

// Checksum hashes the whole state.
func (s *State) Checksum() string {
	h := sha256.New()
	for _, b := range s.blocks {
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Sample hashes one block in every k (1 MiB each), in SampleOrder: a
// request that reads a fixed part of the memory spread over all of it, as a
// server's first request reads its hot structures, not its whole heap. The
// order is the same on every run, so a recorded profile can predict it.
func (s *State) Sample(k int) string {
	h := sha256.New()
	for _, j := range SampleOrder(len(s.blocks), k) {
		h.Write(s.blocks[j])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// SampleOrder lists the blocks Sample(k) reads, of n, in the order it reads
// them: block i*stride mod n for i = 0, 1, ..., where the stride is near
// 0.62 n and shares no factor with n (so every block comes once), keeping
// those that are multiples of k.
func SampleOrder(n, k int) []int {
	stride := n*62/100 | 1
	for gcd(stride, n) != 1 {
		stride += 2
	}
	var out []int
	for i := 0; i < n; i++ {
		if j := i * stride % n; j%k == 0 {
			out = append(out, j)
		}
	}
	return out
}

// Block returns block j of the state (1 MiB).
func (s *State) Block(j int) []byte { return s.blocks[j] }

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// Handle answers one request line.
func (s *State) Handle(req string) (reply string, quit bool) {
	if arg, ok := strings.CutPrefix(req, "sample "); ok {
		k, err := strconv.Atoi(arg)
		if err != nil || k < 1 {
			return fmt.Sprintf("error: sample wants a whole number of at least 1, not %q", arg), false
		}
		return s.Sample(k), false
	}
	switch req {
	case "checksum":
		return s.Checksum(), false
	case "ping":
		return "pong", false
	case "pid":
		return fmt.Sprint(os.Getpid()), false
	case "exit":
		return "bye", true
	}
	return "error: unknown request " + fmt.Sprintf("%q", req), false
}
