package pack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// OpenImage finds the OCI image ref names, for Image:
//   - a directory holding an OCI image layout ("DIR", or "DIR@sha256:..."
//     when its index holds more than one image);
//   - a file made by `docker save` (one image);
//   - otherwise a registry reference (registry.example/ns/name:tag or
//     @sha256:...), fetched for this machine's platform, with the
//     credentials of the standard docker config and credential helpers.
//     Registries on localhost and 127.0.0.1 are spoken to over plain HTTP.
func OpenImage(ctx context.Context, ref string) (v1.Image, error) {
	local, dig, _ := strings.Cut(ref, "@")
	if st, err := os.Stat(local); err == nil {
		if st.IsDir() {
			return layoutImage(local, dig)
		}
		if dig != "" {
			return nil, fmt.Errorf("%s: a docker archive is named by its path alone", ref)
		}
		img, err := tarball.ImageFromPath(local, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: not an image archive from docker save: %w", ref, err)
		}
		return img, nil
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%q is no directory or file here, nor an image reference (registry/name:tag or @sha256:...): %w", ref, err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", ref, err)
	}
	return fetchedImage{img}, nil
}

// fetchedImage is an image read from a registry. go-containerregistry
// checks each of its layers' size and SHA-256 as the layer is read (and
// fails the read's end otherwise), so Image does not hash those bytes a
// second time: on a CPU-bound pack that was about 6% of the time. Layers
// from a layout or an archive come unchecked and Image hashes them.
type fetchedImage struct{ v1.Image }

func layoutImage(dir, dig string) (v1.Image, error) {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return nil, fmt.Errorf("%s is a directory but no OCI image layout (no oci-layout file); to pack a directory tree, leave out --image", dir)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	var picks []v1.Descriptor
	for _, d := range im.Manifests {
		if d.MediaType.IsImage() && (dig == "" || d.Digest.String() == dig) {
			picks = append(picks, d)
		}
	}
	switch {
	case len(picks) == 0 && dig != "":
		return nil, fmt.Errorf("%s holds no image %s", dir, dig)
	case len(picks) == 0:
		return nil, fmt.Errorf("%s holds no image manifest (nested indexes are not followed)", dir)
	case len(picks) > 1:
		return nil, fmt.Errorf("%s holds %d images: name one, as %s@%s", dir, len(picks), dir, picks[0].Digest)
	}
	return idx.Image(picks[0].Digest)
}
