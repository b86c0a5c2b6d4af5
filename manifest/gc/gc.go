// Package gc deletes what no tag needs any more.
//
// Roots are the tags. An image is live if a tag names it or a live image
// depends on it (annotation gpuwarm.depends: a snapshot depends on the
// program-file images it was taken with). A chunk is live if a live image
// lists it; a profile is live if the profile reference of a live image names
// it. Everything else is deleted.
//
// Safety against concurrent writers rests on the store's lock protocol (see
// store.AcquireLock): gc runs only while no pack, snapshot or profile
// recording holds a write lock, and writers wait while gc holds its lock. A
// writer checks which chunks exist only under its lock, so it can never skip
// uploading a chunk that gc is about to delete. In addition, objects younger
// than Grace are never deleted, which covers writers that predate locking or
// whose lock went stale.
package gc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

// DependsAnnotation lists, comma-separated, the image IDs an image needs.
const DependsAnnotation = "gpuwarm.depends"

// Options tune a collection.
type Options struct {
	DryRun bool
	Grace  time.Duration // default 1h; objects younger are kept; negative: none
	Logger *slog.Logger
}

// Report says what a collection found and did.
type Report struct {
	LiveImages         int      `json:"live_images"`
	LiveChunks         int      `json:"live_chunks"`
	LiveProfiles       int      `json:"live_profiles"`
	DeletedManifests   int      `json:"deleted_manifests"`
	DeletedChunks      int      `json:"deleted_chunks"`
	DeletedProfiles    int      `json:"deleted_profiles"`
	DeletedProfileRefs int      `json:"deleted_profile_refs"`
	DeletedBytes       int64    `json:"deleted_bytes"`
	KeptYoung          int      `json:"kept_young"` // unreferenced, but younger than the grace period
	DanglingTags       []string `json:"dangling_tags,omitempty"`
}

// Run collects garbage in s.
func Run(ctx context.Context, s store.Store, opt Options) (*Report, error) {
	if opt.Grace == 0 {
		opt.Grace = time.Hour
	} else if opt.Grace < 0 {
		opt.Grace = 0
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	lock, err := store.AcquireLock(ctx, s, store.GCLock, 0)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.WithoutCancel(ctx))

	rep := &Report{}
	tags, err := store.Tags(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("gc: list tags: %w", err)
	}
	liveImages := map[digest.ID]bool{}
	liveChunks := map[digest.ID]bool{}
	var queue []digest.ID
	for name, id := range tags {
		if _, err := s.Stat(ctx, store.H(store.Manifest, id)); errors.Is(err, store.ErrNotFound) {
			rep.DanglingTags = append(rep.DanglingTags, name)
			continue
		} else if err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
		queue = append(queue, id)
	}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if liveImages[id] {
			continue
		}
		b, err := store.ReadAll(ctx, s, store.H(store.Manifest, id))
		if err != nil {
			return nil, fmt.Errorf("gc: read image %s: %w", id.Short(), err)
		}
		if digest.Of(b) != id {
			return nil, fmt.Errorf("gc: image %s is corrupt in the store; refusing to collect (its chunks cannot be known)", id.Short())
		}
		m, err := manifest.Decode(b)
		if err != nil {
			return nil, fmt.Errorf("gc: image %s: %w; refusing to collect", id.Short(), err)
		}
		liveImages[id] = true
		for _, c := range m.ChunkIDs() {
			liveChunks[c] = true
		}
		for _, dep := range strings.Split(m.Annotations[DependsAnnotation], ",") {
			if dep == "" {
				continue
			}
			did, err := digest.Parse(strings.TrimSpace(dep))
			if err != nil {
				return nil, fmt.Errorf("gc: image %s has a bad %s annotation: %w", id.Short(), DependsAnnotation, err)
			}
			queue = append(queue, did)
		}
	}
	rep.LiveImages, rep.LiveChunks = len(liveImages), len(liveChunks)

	liveProfiles := map[string]bool{}
	var deadRefs []string
	err = s.List(ctx, store.ProfileRef, func(in store.Info) error {
		id, _ := digest.Parse(in.Name)
		if !liveImages[id] {
			deadRefs = append(deadRefs, in.Name)
			return nil
		}
		b, err := store.ReadAll(ctx, s, store.Handle{Kind: store.ProfileRef, Name: in.Name})
		if err != nil {
			return err
		}
		if p, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "profile:"); ok {
			liveProfiles[p] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: list profile references: %w", err)
	}
	rep.LiveProfiles = len(liveProfiles)

	now := time.Now()
	sweep := func(k store.Kind, live func(name string) bool, count *int) error {
		var dead []store.Info
		err := s.List(ctx, k, func(in store.Info) error {
			if !live(in.Name) {
				dead = append(dead, in)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("gc: list %s: %w", k, err)
		}
		for _, in := range dead {
			if now.Sub(in.ModTime) < opt.Grace {
				rep.KeptYoung++
				continue
			}
			if !opt.DryRun {
				if err := s.Delete(ctx, store.Handle{Kind: k, Name: in.Name}); err != nil && !errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("gc: delete %s/%s: %w", k, in.Name, err)
				}
			}
			*count++
			rep.DeletedBytes += in.Size
		}
		return nil
	}
	idLive := func(set map[digest.ID]bool) func(string) bool {
		return func(name string) bool {
			id, err := digest.Parse(name)
			return err == nil && set[id]
		}
	}
	if err := sweep(store.Manifest, idLive(liveImages), &rep.DeletedManifests); err != nil {
		return rep, err
	}
	if err := sweep(store.Chunk, idLive(liveChunks), &rep.DeletedChunks); err != nil {
		return rep, err
	}
	if err := sweep(store.Profile, func(n string) bool { return liveProfiles[n] }, &rep.DeletedProfiles); err != nil {
		return rep, err
	}
	deadSet := map[string]bool{}
	for _, n := range deadRefs {
		deadSet[n] = true
	}
	if err := sweep(store.ProfileRef, func(n string) bool { return !deadSet[n] }, &rep.DeletedProfileRefs); err != nil {
		return rep, err
	}
	return rep, nil
}
