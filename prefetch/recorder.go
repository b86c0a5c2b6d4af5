package prefetch

import (
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// Recorder notes the first touch of every chunk of one image. It is a
// manifest.Observer (and is fed by the restore agent's page server).
type Recorder struct {
	image digest.ID
	start time.Time
	mu    sync.Mutex
	seen  map[digest.ID]bool
	order []Entry
}

// NewRecorder records touches of image from now.
func NewRecorder(image digest.ID) *Recorder {
	return &Recorder{image: image, start: time.Now(), seen: map[digest.ID]bool{}}
}

// Touch records a chunk read.
func (r *Recorder) Touch(img digest.ID, entry, idx int, id digest.ID, size uint32) {
	if img != r.image {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen[id] {
		return
	}
	r.seen[id] = true
	r.order = append(r.order, Entry{ID: id, Size: size, TimeMS: uint64(time.Since(r.start).Milliseconds()), Seen: 1})
}

// Profile is what was recorded, as a one-run profile.
func (r *Recorder) Profile() *Profile {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &Profile{Image: r.image, Runs: 1, Entries: append([]Entry(nil), r.order...)}
}
