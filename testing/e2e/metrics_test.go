package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches the daemon's /metrics, parses it with Prometheus' own
// text parser, and returns each sample's value by its name and labels as
// name{k="v",...} (labels sorted), and the text.
func scrape(t *testing.T, addr string) (map[string]float64, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	parser := expfmt.NewTextParser(model.LegacyValidation) // classic names, as promtool checks them
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, b)
	}
	out := map[string]float64{}
	key := func(name string, m *dto.Metric, extra ...string) string {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
		}
		ls = append(ls, extra...)
		sort.Strings(ls)
		return name + "{" + strings.Join(ls, ",") + "}"
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key(name, m)] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key(name, m)] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key(name+"_count", m)] = float64(m.GetHistogram().GetSampleCount())
				out[key(name+"_sum", m)] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out, string(b)
}

func metricNames(text string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
			if f[3] == "histogram" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[f[2]+s] = true
				}
			}
		}
	}
	return names
}

// TestMetricsCacheControlAndDashboard: a mount with --metrics-addr serves
// /healthz and Prometheus metrics made from the same counters as .stats
// (a real restore reported through the spool shows up too); promtool
// accepts them; every series the Grafana dashboard queries is exported and
// every query parses; `gpuwarm cache stat|evict|warm` work against the
// running daemon.
func TestMetricsCacheControlAndDashboard(t *testing.T) {
	requireCRIU(t)
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool missing: make setup installs it (Debian's prometheus package)")
		}
		t.Skip("promtool missing: make setup installs it")
	}
	tmp := t.TempDir()
	storeDir, mnt, cacheDir, spool := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt"), filepath.Join(tmp, "cache"), filepath.Join(tmp, "spool")
	src := filepath.Join(tmp, "src")
	makeTree(t, src, 6)
	gw(t, "pack", src, "--tag", "tree", "--store", storeDir)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := startMount(t, storeDir, mnt, cacheDir, "--metrics-addr", addr, "--restore-reports", spool, "--no-prefetch", "--log-format", "json")
	m0, _ := scrape(t, addr)

	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("/healthz: %d %q", resp.StatusCode, body)
	}
	// Read every file: fetches, FUSE requests, cache entries.
	readAll := func(root string) (total int64, files int) {
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatalf("read %s: %v", p, err)
				}
				total += int64(len(b))
				files++
			}
			return nil
		})
		return total, files
	}
	total, files := readAll(filepath.Join(mnt, "tree"))
	m1, _ := scrape(t, addr)
	st := fmt.Sprintf(`store="file://%s"`, storeDir)
	fetchKey := `gpuwarm_store_fetch_bytes_total{` + st + `}`
	// The known reads moved the counters by what they read: every chunk
	// of the image fetched once (a cold cache), every file opened and read.
	type stat struct {
		Image        string
		Chunks       int
		MemBytes     int64 `json:"memory_bytes"`
		Disk         int64 `json:"disk_bytes"`
		MissingBytes int64 `json:"missing_bytes"`
		Total        int64 `json:"bytes"`
	}
	readStat := func() stat {
		var s stat
		if err := json.Unmarshal([]byte(gw(t, "cache", "--cache-dir", cacheDir, "stat", "tree", "--json")), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	img := readStat()
	fetchesKey := `gpuwarm_store_fetches_total{` + st + `}`
	if got := m1[fetchesKey] - m0[fetchesKey]; got != float64(img.Chunks) {
		t.Errorf("reading the image's %d chunks fetched %v", img.Chunks, got)
	}
	if got := m1[fetchKey] - m0[fetchKey]; got <= 0 || got > float64(total)*1.01+1e5 {
		t.Errorf("reading %d bytes (compressed in the store) fetched %v bytes", total, got)
	}
	readsKey := `gpuwarm_fuse_request_seconds_count{op="read"}`
	if got := m1[readsKey] - m0[readsKey]; got < float64(files) {
		t.Errorf("%d files read in %v FUSE reads", files, got)
	}
	opensKey := `gpuwarm_fuse_request_seconds_count{op="open"}`
	if got := m1[opensKey] - m0[opensKey]; got < float64(files) {
		t.Errorf("%d files opened, %v FUSE opens counted", files, got)
	}

	// A real restore, reported through the spool.
	wl := buildWorkload(t)
	logA := filepath.Join(tmp, "a.log")
	pidS := strings.TrimSpace(gw(t, "run", "--log", logA, "--", wl, "--mb", "16"))
	waitLine(t, logA, "ready")
	gw(t, "snapshot", "--pid", pidS, "--tag", "snap", "--store", storeDir)
	out := gw(t, "restore", "snap", "--lazy", "--mount", mnt, "--store", storeDir, "--restore-reports", spool)
	rpid, _ := strconv.Atoi(strings.Fields(strings.SplitN(out, "pid ", 2)[1])[0])
	t.Cleanup(func() { killPID(rpid) })

	m, text := scrape(t, addr)
	for _, want := range []struct {
		series string
		min    float64
	}{
		{`gpuwarm_store_fetches_total{` + st + `}`, 1},
		{`gpuwarm_store_fetch_bytes_total{` + st + `}`, float64(total) / 2},
		{`gpuwarm_store_fetch_seconds_count{` + st + `}`, 1},
		{`gpuwarm_fuse_request_seconds_count{op="read"}`, 1},
		{`gpuwarm_fuse_request_seconds_count{op="lookup"}`, 1},
		{`gpuwarm_cache_entries{tier="memory"}`, 1},
		{`gpuwarm_cache_entries{tier="disk"}`, 0},
		{`gpuwarm_restores_total{kind="bare",mode="lazy",result="ok"}`, 1},
		{`gpuwarm_restore_running_seconds_count{kind="bare",mode="lazy"}`, 1},
		{`gpuwarm_restore_lazy_bytes_total{kind="bare",mode="lazy"}`, 16 << 20},
		{`gpuwarm_store_fetch_errors_total{kind="corrupt",` + st + `}`, 0},
	} {
		v, ok := m[want.series]
		if !ok || v < want.min {
			t.Errorf("%s = %v (present %v), want >= %v", want.series, v, ok, want.min)
		}
	}
	if t.Failed() {
		t.Fatalf("metrics:\n%s", text)
	}
	// Bounded labels: no chunk or file ever becomes a label value.
	if regexp.MustCompile(`[0-9a-f]{64}`).MatchString(text) {
		t.Fatal("a 64-digit ID appears in the metrics (unbounded label)")
	}
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = strings.NewReader(text)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}

	// The dashboard: every expression parses (as a recording rule for
	// promtool) and names only series the daemon exports.
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	b, err := os.ReadFile("../../deploy/grafana/gpuwarm-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	exported := metricNames(text)
	var rules strings.Builder
	rules.WriteString("groups:\n- name: dashboard\n  rules:\n")
	n := 0
	nameRE := regexp.MustCompile(`gpuwarm_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			n++
			for _, name := range nameRE.FindAllString(tg.Expr, -1) {
				if !exported[name] {
					t.Errorf("panel %q queries %s, which the daemon does not export", p.Title, name)
				}
			}
			// Grafana's variables, as a query would see them.
			expr := strings.ReplaceAll(tg.Expr, "$instance", ".*")
			fmt.Fprintf(&rules, "  - record: dashboard:q%d\n    expr: %q\n", n, expr)
		}
	}
	if n < 10 {
		t.Fatalf("the dashboard has %d queries", n)
	}
	rulesFile := filepath.Join(tmp, "rules.yml")
	os.WriteFile(rulesFile, []byte(rules.String()), 0o644)
	if out, err := exec.Command(promtool, "check", "rules", rulesFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules (the dashboard's queries): %v\n%s", err, out)
	}

	// Cache control against the running daemon.
	cache := func(args ...string) string {
		return gw(t, append([]string{"cache", "--cache-dir", cacheDir}, args...)...)
	}
	s := readStat()
	if s.Chunks == 0 || s.MemBytes == 0 {
		t.Fatalf("after reading every file, cache stat says %+v", s)
	}
	if out := cache("evict", "tree"); !strings.Contains(out, "evicted") {
		t.Fatalf("evict: %s", out)
	}
	if s := readStat(); s.MemBytes != 0 || s.Disk != 0 || s.MissingBytes != s.Total {
		t.Fatalf("after evict: %+v", s)
	}
	before, _ := scrape(t, addr)
	// After an evict, a read fetches again (once the kernel's page cache
	// of the files, which would answer without asking, is dropped).
	bu.DropCaches()
	readAll(filepath.Join(mnt, "tree"))
	again, _ := scrape(t, addr)
	if got := again[fetchesKey] - before[fetchesKey]; got != float64(img.Chunks) {
		t.Fatalf("after evict, reading the image's %d chunks fetched %v", img.Chunks, got)
	}
	cache("evict", "tree")
	before, _ = scrape(t, addr)
	out = cache("warm", "tree")
	if !strings.Contains(out, "in the disk tier") {
		t.Fatalf("warm: %s", out)
	}
	if s := readStat(); s.Disk != s.Total || s.MissingBytes != 0 {
		t.Fatalf("after warm: %+v", s)
	}
	after, _ := scrape(t, addr)
	if got := after[fetchesKey] - before[fetchesKey]; got != float64(img.Chunks) {
		t.Fatalf("warm fetched %v chunks from the store, the image has %d", got, img.Chunks)
	}
	// Warmed: every file reads with the store gone. (Through the image's
	// ID: a tag is looked up in the store again once its TTL is over.)
	bu.DropCaches()
	if err := os.Rename(storeDir, storeDir+".away"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // past the mount's tag TTL
	if got, _ := readAll(filepath.Join(mnt, "by-id", img.Image)); got != total {
		t.Fatalf("with the store gone, read %d of %d bytes", got, total)
	}
	os.Rename(storeDir+".away", storeDir)
	// Every log line of the daemon is a JSON object naming its store.
	lines := strings.Split(strings.TrimSpace(d.logs.String()), "\n")
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("--log-format json wrote a line that is not JSON: %q", l)
		}
		if rec["msg"] == "mounted" && rec["store"] == nil {
			t.Fatalf("the mount's log line names no store: %q", l)
		}
	}
	if len(lines) < 2 {
		t.Fatalf("daemon log: %q", lines)
	}
	// A tag the store lacks: a clear error.
	c := exec.Command(gpuwarmBin, "cache", "--cache-dir", cacheDir, "stat", "nope")
	if out, err := c.CombinedOutput(); err == nil || !strings.Contains(string(out), `no image tagged "nope"`) {
		t.Fatalf("cache stat of a missing tag: %v %s", err, out)
	}
	// No daemon on a cache directory: says so.
	c = exec.Command(gpuwarmBin, "cache", "--cache-dir", tmp, "stat")
	if out, err := c.CombinedOutput(); err == nil || !strings.Contains(string(out), "no running gpuwarm mount") {
		t.Fatalf("cache stat without a daemon: %v %s", err, out)
	}
}

func killPID(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}
