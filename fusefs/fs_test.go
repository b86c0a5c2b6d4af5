package fusefs

import "testing"

// TestSigkillPending: a fatal signal shows as SIGKILL pending in
// /proc/PID/status; other pending signals do not count.
func TestSigkillPending(t *testing.T) {
	for status, want := range map[string]bool{
		"Name:\tstat\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000000000\n": true,
		"SigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n":              true,
		"SigPnd:\t0000000000004000\nShdPnd:\t0000000000000000\n":              false, // SIGTERM alone: handled, not fatal yet
		"SigPnd:\t0000000000000000\n":                                         false,
		"":                                                                    false,
	} {
		if got := sigkillPending(status); got != want {
			t.Errorf("sigkillPending(%q) = %v, want %v", status, got, want)
		}
	}
}
