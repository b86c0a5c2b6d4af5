package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRecordReplay: gpuwarm record stores a profile; a mount replays it (the
// reads then hit chunks already fetched); a corrupt profile is ignored with
// a warning and the program still reads correctly.
func TestRecordReplay(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	src, storeDir := filepath.Join(tmp, "src"), filepath.Join(tmp, "store")
	makeTree(t, src, 16)
	gw(t, "pack", src, "--tag", "app", "--store", storeDir)
	recMnt := filepath.Join(tmp, "rec")
	out := gw(t, "record", "--tag", "app", "--mount", recMnt, "--store", storeDir, "--", "sh", "-c", "cat $GPUWARM_IMAGE/big/weights.bin $GPUWARM_IMAGE/bin/tool > /dev/null")
	if !strings.Contains(out, "recorded") || !strings.Contains(out, "1 runs") {
		t.Fatalf("record: %s", out)
	}
	if show := gw(t, "profile", "show", "app", "--store", storeDir); !strings.Contains(show, "runs    1") {
		t.Fatalf("profile show: %s", show)
	}
	gw(t, "record", "--tag", "app", "--mount", recMnt, "--store", storeDir, "--", "sh", "-c", "cat $GPUWARM_IMAGE/big/weights.bin > /dev/null")
	if show := gw(t, "profile", "show", "app", "--store", storeDir, "--json"); !strings.Contains(show, `"runs":2`) {
		t.Fatalf("merged profile: %s", show)
	}
	url := storeDir + "?sim-latency=2ms&sim-bandwidth=2e8"
	mnt := filepath.Join(tmp, "mnt")
	d := startMount(t, url, mnt, filepath.Join(tmp, "cache"))
	os.Stat(filepath.Join(mnt, "app")) // loads the image: the replay starts
	compareOne(t, filepath.Join(src, "big/weights.bin"), filepath.Join(mnt, "app/big/weights.bin"))
	stats, _ := os.ReadFile(filepath.Join(mnt, ".stats"))
	if !strings.Contains(string(stats), "\"prefetch\"") || !strings.Contains(string(stats), "\"hit_rate\"") {
		t.Fatalf("no replay in the mount's stats:\n%s", stats)
	}
	d.stop(t)
	// The replay's hit rate is kept beside this worker's cache.
	show := gw(t, "profile", "show", "app", "--store", storeDir, "--cache-dir", filepath.Join(tmp, "cache"), "--json")
	// The file was read while the replay ran: each chunk was either read
	// through the daemon (touched) or put into the page cache first.
	if !strings.Contains(show, `"last_replay"`) || !strings.Contains(show, `"kind":"mount"`) || strings.Contains(show, `"touched":0`) && strings.Contains(show, `"warmed":0`) {
		t.Fatalf("profile show has no last replay: %s", show)
	}
	if show := gw(t, "profile", "show", "app", "--store", storeDir, "--cache-dir", filepath.Join(tmp, "cache")); !strings.Contains(show, "hit rate") {
		t.Fatalf("profile show: %s", show)
	}

	// --preload: the image loads and its profile replays as soon as the
	// mount is up, before anything reads it, and its chunks go into the
	// page cache of their files: reading them then reaches neither the
	// store nor the daemon. A name that is no tag is reported and does not
	// stop the others. With --warm-page-cache=false the reads come to the
	// daemon, and still need no store read.
	for _, warm := range []bool{true, false} {
		d3 := startMount(t, url, mnt, filepath.Join(tmp, fmt.Sprintf("cache-preload-%v", warm)), "--preload", "nosuchtag,app", fmt.Sprintf("--warm-page-cache=%v", warm))
		deadline := time.Now().Add(20 * time.Second)
		for {
			s := d3.stats(t)
			done := false
			for _, r := range s.Prefetch {
				done = r.Chunks > 0 && r.Fetched == r.Chunks && r.Touched == 0 && (!warm || r.Warmed == r.Chunks)
			}
			if done && s.Fetches > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("preloaded profile not replayed (warm %v) before any read: %+v\n%s", warm, s, d3.logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		before := d3.stats(t)
		compareOne(t, filepath.Join(src, "big/weights.bin"), filepath.Join(mnt, "app/big/weights.bin"))
		after := d3.stats(t)
		if after.Fetches != before.Fetches {
			t.Errorf("a file of the replayed profile needed %d more store reads", after.Fetches-before.Fetches)
		}
		// The pushed pages are ones nobody has read yet, the first the kernel
		// reclaims (this VM keeps little page cache): reads may reach the
		// daemon then, and only then, which the mount sees as pages lost.
		evicted := after.Opens.PageCacheLost > before.Opens.PageCacheLost
		if warm && (after.Memory.Hits != before.Memory.Hits && !evicted || after.PageCachePushed < 16<<20) {
			t.Errorf("reads of a file put into the page cache reached the daemon: %+v -> %+v", before.Stats, after.Stats)
		}
		if warm && evicted {
			t.Logf("the kernel dropped pushed pages before the read (%d reads reached the daemon, served from memory)", after.Memory.Hits-before.Memory.Hits)
		}
		if !warm && (after.Memory.Hits == before.Memory.Hits || after.PageCachePushed != 0) {
			t.Errorf("--warm-page-cache=false: pushed %d bytes, memory hits %d -> %d", after.PageCachePushed, before.Memory.Hits, after.Memory.Hits)
		}
		if !d3.logHas(`no tag \"nosuchtag\"`) {
			t.Errorf("no warning about the unknown --preload name:\n%s", d3.logs.String())
		}
		d3.stop(t)
	}

	// Corrupt the stored profile: the mount warns and boots without it.
	profiles, _ := filepath.Glob(filepath.Join(storeDir, "profiles", "*"))
	for _, p := range profiles {
		os.WriteFile(p, []byte("GWPF garbage"), 0o644)
	}
	d2 := startMount(t, storeDir, mnt, filepath.Join(tmp, "cache2"))
	compareTrees(t, src, filepath.Join(mnt, "app"))
	if !d2.logHas("ignoring the image's prefetch profile") {
		t.Fatalf("no warning about the corrupt profile:\n%s", d2.logs.String())
	}
}
