package prefetch

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// LastReplay is how the last replay of an image's profile on this worker
// went: a mount replaying it ahead of a program's reads, or a lazy restore
// filling memory in its order. It lives beside the block cache (the number
// is about this worker), as JSON under DIR/replays/IMAGE.json.
type LastReplay struct {
	Image   string    `json:"image"`
	Kind    string    `json:"kind"` // "mount" or "restore"
	When    time.Time `json:"when"`
	Chunks  int64     `json:"chunks"`  // in the profile
	Fetched int64     `json:"fetched"` // chunks (mount) or memory units (restore) brought in ahead of demand
	Touched int64     `json:"touched"` // chunks the program read (mount) or memory units filled (restore)
	Hits    int64     `json:"hits"`    // touched after the replay had brought them in
	Misses  int64     `json:"misses"`  // touched before: the program waited for a fetch
	Warmed  int64     `json:"warmed"`  // put into the kernel's page cache ahead of the program, whose reads of them are then not seen (mount)
	HitRate float64   `json:"hit_rate"`
}

func replayPath(dir string, image digest.ID) string {
	return filepath.Join(dir, "replays", image.String()+".json")
}

// SaveLastReplay records r for image under dir (atomically).
func SaveLastReplay(dir string, image digest.ID, r LastReplay) error {
	r.Image = image.String()
	if r.When.IsZero() {
		r.When = time.Now().UTC()
	}
	if r.Touched > 0 {
		r.HitRate = float64(r.Hits) / float64(r.Touched)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	p := replayPath(dir, image)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// LoadLastReplay returns the last replay recorded for image under dir, or
// nil if there was none.
func LoadLastReplay(dir string, image digest.ID) (*LastReplay, error) {
	b, err := os.ReadFile(replayPath(dir, image))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r LastReplay
	if err := json.Unmarshal(b, &r); err != nil || r.Image != image.String() {
		return nil, fmt.Errorf("unreadable replay record %s: %v", replayPath(dir, image), err)
	}
	return &r, nil
}

// Last returns the replay's counters as a LastReplay record.
func (r *Replayer) Last() LastReplay {
	s := r.Stats()
	return LastReplay{Kind: "mount", Chunks: s.Chunks, Fetched: s.Fetched, Touched: s.Touched, Hits: s.Hits, Misses: s.Misses, Warmed: s.Warmed}
}

// RestoreReplay is the record of a lazy restore that filled units memory
// units in a profile of chunks entries, faults of them (copies a fault
// asked for) after the program had touched them: every other unit was in
// place, or on its way, when the program reached it.
func RestoreReplay(chunks, units, faults int64) LastReplay {
	return LastReplay{Kind: "restore", Chunks: chunks, Fetched: units - faults, Touched: units, Hits: units - faults, Misses: faults}
}
