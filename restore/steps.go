package restore

import (
	"log/slog"
	"time"
)

// Steps logs, at debug level, how long each step of a longer operation
// took (--log-level debug), so that a slow restore on a worker can be
// taken apart without a profiler.
type Steps struct {
	log  *slog.Logger
	what string
	last time.Time
}

// NewSteps starts timing the steps of what.
func NewSteps(log *slog.Logger, what string) *Steps {
	if log == nil {
		log = slog.Default()
	}
	return &Steps{log: log, what: what, last: time.Now()}
}

// Done logs the step that just ended and starts the next.
func (s *Steps) Done(step string) {
	now := time.Now()
	s.log.Debug(s.what, "step", step, "ms", float64(now.Sub(s.last).Microseconds())/1000)
	s.last = now
}
