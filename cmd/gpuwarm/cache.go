package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/gpuwarm/gpuwarm/manifest/pack"
)

func init() {
	register(spec{name: "cache", args: "stat [TAG...] | warm TAG... [--profile] | evict TAG...|--all", help: "a running mount's block cache: what of an image it holds, fill it, empty it",
		new: func() command { return &cacheOptions{} }})
}

type cacheOptions struct {
	cli
	cache         cacheFlags
	json, profile bool
	all, quiet    bool
}

func (o *cacheOptions) flags(fs *flagSet) {
	o.cache.registerDir(fs)
	fs.BoolVar(&o.json, "json", false, "print JSON")
	fs.BoolVar(&o.profile, "profile", false, "stat and warm: only the chunks of the image's prefetch profile")
	fs.BoolVar(&o.all, "all", false, "evict: every image's chunks and the whole memory tier")
	fs.BoolVar(&o.quiet, "quiet", false, "warm: no progress line")
}

func (o *cacheOptions) run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("want stat, warm or evict")
	}
	verb, names := args[0], args[1:]
	hc, err := controlClient(o.cache.dir)
	if err != nil {
		return err
	}
	q := func(kv ...string) url.Values {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		if o.profile {
			v.Set("profile", "1")
		}
		return v
	}
	switch verb {
	case "stat":
		if len(names) == 0 {
			var s json.RawMessage
			if err := o.call(ctx, hc, http.MethodGet, controlURL("/v1/stat", nil), &s); err != nil {
				return err
			}
			return o.print(s)
		}
		for _, n := range names {
			var s cacheImageStat
			if err := o.call(ctx, hc, http.MethodGet, controlURL("/v1/stat", q("image", n)), &s); err != nil {
				return err
			}
			if o.json {
				printJSON(o.out, s)
				continue
			}
			what := "image"
			if s.ProfileOnly {
				what = "profile"
			}
			fmt.Fprintf(o.out, "%s (%s %s): %d chunks, %s\n  memory %s (%d chunks), disk %s (%d chunks), in neither %s\n",
				n, what, s.Image[:12], s.Chunks, pack.HumanBytes(s.Bytes), pack.HumanBytes(s.MemBytes), s.MemChunks,
				pack.HumanBytes(s.DiskBytes), s.DiskChunks, pack.HumanBytes(s.Missing))
		}
		return nil
	case "warm":
		if len(names) == 0 {
			return usagef("cache warm: want at least one tag")
		}
		for _, n := range names {
			if err := o.warm(ctx, hc, n, q("image", n)); err != nil {
				return err
			}
		}
		return nil
	case "evict":
		if len(names) == 0 && !o.all {
			return usagef("cache evict: want tags, or --all")
		}
		if o.all {
			names = []string{""}
		}
		for _, n := range names {
			var r evictResult
			v := q("image", n)
			if n == "" {
				v = url.Values{"all": {"1"}}
			}
			if err := o.call(ctx, hc, http.MethodPost, controlURL("/v1/evict", v), &r); err != nil {
				return err
			}
			if o.json {
				printJSON(o.out, r)
			} else if n == "" {
				fmt.Fprintf(o.out, "evicted %d chunks (%s) and the memory tier\n", r.Chunks, pack.HumanBytes(r.Bytes))
			} else {
				fmt.Fprintf(o.out, "%s: evicted %d chunks (%s)\n", n, r.Chunks, pack.HumanBytes(r.Bytes))
			}
		}
		return nil
	}
	return usagef("cache %s: want stat, warm or evict", verb)
}

func (o *cacheOptions) print(raw json.RawMessage) error {
	if o.json {
		_, err := fmt.Fprintln(o.out, string(raw))
		return err
	}
	var pretty any
	json.Unmarshal(raw, &pretty)
	b, _ := json.MarshalIndent(pretty, "", "  ")
	_, err := fmt.Fprintln(o.out, string(b))
	return err
}

// send makes one request of the daemon and returns its answer's body
// (the caller closes it); a refusal becomes the daemon's error message.
func send(ctx context.Context, hc *http.Client, method, u string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the mount daemon's control socket: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e struct{ Error string }
		json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e)
		return nil, fmt.Errorf("mount daemon: %s", e.Error)
	}
	return resp.Body, nil
}

func (o *cacheOptions) call(ctx context.Context, hc *http.Client, method, u string, into any) error {
	body, err := send(ctx, hc, method, u)
	if err != nil {
		return err
	}
	defer body.Close()
	return json.NewDecoder(io.LimitReader(body, 16<<20)).Decode(into)
}

// warm asks the daemon to fill its disk tier with an image and shows the
// progress it streams (a line rewritten in place on a terminal).
func (o *cacheOptions) warm(ctx context.Context, hc *http.Client, name string, v url.Values) error {
	body, err := send(ctx, hc, http.MethodPost, controlURL("/v1/warm", v))
	if err != nil {
		return err
	}
	defer body.Close()
	bar := newProgress(o.out, o.quiet || o.json, "warm "+name)
	sc := bufio.NewScanner(body)
	var last warmProgress
	for sc.Scan() {
		if json.Unmarshal(sc.Bytes(), &last) != nil {
			continue
		}
		bar.update(last.Done, last.Total)
	}
	bar.done()
	if !last.Final {
		return fmt.Errorf("warm %s: the daemon ended the stream early: %v", name, sc.Err())
	}
	if last.Error != "" {
		return fmt.Errorf("warm %s: %s", name, last.Error)
	}
	if o.json {
		return printJSON(o.out, last)
	}
	rate := 0.0
	if last.Seconds > 0 {
		rate = float64(last.Fetched) / last.Seconds
	}
	fmt.Fprintf(o.out, "%s: %s in the disk tier, %s fetched from the store in %.1fs (%s/s)\n", name,
		pack.HumanBytes(last.Total), pack.HumanBytes(last.Fetched), last.Seconds, pack.HumanBytes(int64(rate)))
	return nil
}
