package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/internal/histo"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore/report"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The mount daemon's Prometheus metrics: read from the same counters as
// MOUNTPOINT/.stats at each scrape (a const-metric collector, so the hot
// paths keep their atomic adds and nothing else), plus the restores that
// `gpuwarm restore` reported through the spool (restore/report). Labels are
// bounded: a tier, a store (one per daemon), a FUSE operation, an error
// kind, a restore mode; never a chunk, file or image.

const metricsNS = "gpuwarm"

type metricsCollector struct {
	fsys  *fusefs.FS
	spool string

	mu       sync.Mutex
	restores map[restoreKey]*restoreAgg
	badSpool float64
}

type restoreKey struct {
	mode      string
	container bool
	ok        bool
}

type restoreAgg struct {
	count             float64
	running, resident histo.Histogram
	gpu               histo.Histogram
	gpuBytes, lazy    float64
	faults            float64
	weights           histo.Histogram
	weightsBytes      float64
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(metricsNS+"_"+name, help, labels, nil)
}

// The series every gpuwarm mount exports (the dashboard's queries are
// checked against this list by a test).
var (
	dCacheHits       = desc("cache_hits_total", "Block cache lookups served by the tier.", "tier")
	dCacheMisses     = desc("cache_misses_total", "Block cache lookups the tier did not hold.", "tier")
	dCacheBytes      = desc("cache_bytes", "Bytes the tier holds.", "tier")
	dCacheEntries    = desc("cache_entries", "Chunks (and assembled files) the tier holds.", "tier")
	dCacheEvictions  = desc("cache_evictions_total", "Entries the tier dropped to stay within its limit.", "tier")
	dCacheLimit      = desc("cache_limit_bytes", "The tier's size limit (disk: what its filesystem leaves room for).", "tier")
	dCacheFull       = desc("cache_full_total", "Disk tier writes its filesystem refused for lack of room.", "tier")
	dCacheCorrupt    = desc("cache_corrupt_total", "Chunks refused or dropped because their bytes did not match their hash.")
	dFetches         = desc("store_fetches_total", "Chunk reads from the store.", "store")
	dFetchBytes      = desc("store_fetch_bytes_total", "Bytes read from the store.", "store")
	dRangedFetches   = desc("store_ranged_fetches_total", "Store reads of a chunk's blocks (random reads), of store_fetches_total.", "store")
	dFetchErrors     = desc("store_fetch_errors_total", "Failed chunk reads from the store, by kind.", "store", "kind")
	dFetchSeconds    = desc("store_fetch_seconds", "Latency of chunk reads from the store.", "store")
	dFUSESeconds     = desc("fuse_request_seconds", "Time gpuwarm took to answer FUSE requests, by operation.", "op")
	dFUSEInterrupt   = desc("fuse_interrupted_total", "FUSE requests whose caller gave up before the answer.")
	dOpens           = desc("opens_total", "File opens, by how their reads are served (passthrough: by the kernel from the disk tier).", "mode")
	dReplays         = desc("prefetch_replays", "Prefetch profiles being replayed (images loaded with a profile).")
	dReplayFetched   = desc("prefetch_fetched_chunks", "Chunks the current replays brought in ahead of demand.")
	dReplayHits      = desc("prefetch_hits_chunks", "Chunks programs read after a replay brought them in.")
	dReplayLate      = desc("prefetch_late_chunks", "Chunks programs read before the replay got to them.")
	dRestores        = desc("restores_total", "Restores run on this worker, by mode, kind and result.", "mode", "kind", "result")
	dRestoreRunning  = desc("restore_running_seconds", "From the start of a restore until the program runs.", "mode", "kind")
	dRestoreResid    = desc("restore_resident_seconds", "From the start of a restore until all its memory is in place.", "mode", "kind")
	dRestoreGPU      = desc("restore_gpu_seconds", "The CUDA restore of a snapshot's GPU state.", "mode", "kind")
	dRestoreGPUB     = desc("restore_gpu_bytes_total", "GPU memory put back by restores.", "mode", "kind")
	dRestoreWeights  = desc("restore_weights_seconds", "Weights uploaded from the mount by the workload's library (gpuwarm_weights), per restore.", "mode", "kind")
	dRestoreWeightsB = desc("restore_weights_bytes_total", "Weight bytes the workloads' libraries uploaded from the mount.", "mode", "kind")
	dRestoreLazy     = desc("restore_lazy_bytes_total", "Memory filled by gpuwarm's lazy-pages daemon.", "mode", "kind")
	dRestoreFaults   = desc("restore_lazy_faults_total", "Page faults the lazy-pages daemon answered.", "mode", "kind")
	dSpoolBad        = desc("restore_reports_bad_total", "Restore reports in the spool that could not be read.")
)

func newMetricsCollector(fsys *fusefs.FS, spool string) *metricsCollector {
	return &metricsCollector{fsys: fsys, spool: spool, restores: map[restoreKey]*restoreAgg{}}
}

func (m *metricsCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(m, ch) }

func (m *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	s := m.fsys.Stats()
	c := prometheus.CounterValue
	g := prometheus.GaugeValue
	mk := func(d *prometheus.Desc, t prometheus.ValueType, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, l...)
	}
	for tier, ts := range map[string]cache.TierStats{"memory": s.Memory, "disk": s.Disk} {
		mk(dCacheHits, c, float64(ts.Hits), tier)
		mk(dCacheMisses, c, float64(ts.Misses), tier)
		mk(dCacheBytes, g, float64(ts.Bytes), tier)
		mk(dCacheEntries, g, float64(ts.Entries), tier)
		mk(dCacheEvictions, c, float64(ts.Evictions), tier)
		mk(dCacheLimit, g, float64(ts.Limit), tier)
		mk(dCacheFull, c, float64(ts.Full), tier)
	}
	mk(dCacheCorrupt, c, float64(s.Corrupt))
	st := s.Store
	mk(dFetches, c, float64(s.Fetches), st)
	mk(dFetchBytes, c, float64(s.FetchBytes), st)
	mk(dRangedFetches, c, float64(s.RangedFetches), st)
	for k, v := range s.FetchErrorKinds {
		mk(dFetchErrors, c, float64(v), st, k)
	}
	ch <- constHistogram(dFetchSeconds, s.FetchLatency, st)
	for op, h := range s.FUSE.Ops {
		ch <- constHistogram(dFUSESeconds, h, op)
	}
	mk(dFUSEInterrupt, c, float64(s.FUSE.Interrupted))
	mk(dOpens, c, float64(s.Opens.Passthrough), "passthrough")
	mk(dOpens, c, float64(s.Opens.Cached), "daemon")
	var replays, fetched, hits, late float64
	for _, v := range s.Prefetch {
		if r, ok := v.(prefetch.Stats); ok {
			replays++
			fetched += float64(r.Fetched)
			hits += float64(r.Hits)
			late += float64(r.Misses)
		}
	}
	mk(dReplays, g, replays)
	mk(dReplayFetched, g, fetched)
	mk(dReplayHits, g, hits)
	mk(dReplayLate, g, late)

	m.mu.Lock()
	defer m.mu.Unlock()
	rs, bad, _ := report.Collect(m.spool)
	m.badSpool += float64(bad)
	for _, r := range rs {
		k := restoreKey{r.Mode, r.Container, r.OK}
		a := m.restores[k]
		if a == nil {
			a = &restoreAgg{}
			m.restores[k] = a
		}
		a.count++
		if r.OK {
			a.running.Observe(seconds(r.Running))
			a.resident.Observe(seconds(r.Resident))
			if r.GPU > 0 {
				a.gpu.Observe(seconds(r.GPU))
			}
			a.gpuBytes += float64(r.GPUBytes)
			if r.WeightsBytes > 0 {
				a.weights.Observe(seconds(r.WeightsSeconds))
				a.weightsBytes += float64(r.WeightsBytes)
			}
			a.lazy += float64(r.LazyBytes)
			a.faults += float64(r.Faults)
		}
	}
	// Every mode's series exist from the start (dashboards see zeros).
	for _, mode := range []string{"eager", "prefill", "lazy"} {
		for _, ctr := range []bool{false, true} {
			kind := "bare"
			if ctr {
				kind = "container"
			}
			okA := m.restores[restoreKey{mode, ctr, true}]
			failA := m.restores[restoreKey{mode, ctr, false}]
			if okA == nil {
				okA = &restoreAgg{}
			}
			failed := 0.0
			if failA != nil {
				failed = failA.count
			}
			mk(dRestores, c, okA.count, mode, kind, "ok")
			mk(dRestores, c, failed, mode, kind, "failed")
			ch <- constHistogram(dRestoreRunning, okA.running.Snapshot(), mode, kind)
			ch <- constHistogram(dRestoreResid, okA.resident.Snapshot(), mode, kind)
			ch <- constHistogram(dRestoreGPU, okA.gpu.Snapshot(), mode, kind)
			mk(dRestoreGPUB, c, okA.gpuBytes, mode, kind)
			ch <- constHistogram(dRestoreWeights, okA.weights.Snapshot(), mode, kind)
			mk(dRestoreWeightsB, c, okA.weightsBytes, mode, kind)
			mk(dRestoreLazy, c, okA.lazy, mode, kind)
			mk(dRestoreFaults, c, okA.faults, mode, kind)
		}
	}
	mk(dSpoolBad, c, m.badSpool)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func constHistogram(d *prometheus.Desc, s histo.Snapshot, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstHistogram(d, s.Count, s.Sum, s.Cumulative(), labels...)
}

// serveMetrics serves /metrics and /healthz on addr until ctx ends.
// /healthz answers 200 when the mount answers a stat of its root within
// two seconds, 503 otherwise.
func serveMetrics(ctx context.Context, addr, mountDir string, col prometheus.Collector, version string) (func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(col, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNS, Name: "build_info",
		Help: "The running gpuwarm's version.", ConstLabels: prometheus.Labels{"version": version}}, func() float64 { return 1 }))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := mountServes(mountDir, 2*time.Second); err != nil {
			http.Error(w, "not serving: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	return func() { srv.Close() }, nil
}

// mountServes stats the mount's .stats file through the kernel: it fails
// if the daemon does not answer (hung, or the mount is gone).
func mountServes(dir string, limit time.Duration) error {
	done := make(chan error, 1)
	go func() {
		_, err := os.Stat(filepath.Join(dir, fusefs.StatsName))
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		return errors.New("the mount did not answer within " + limit.String())
	}
}
