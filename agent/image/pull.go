package image

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// ErrInsecureRegistry is returned when a registry would be reached over
// plain HTTP without the operator having marked it insecure.
var ErrInsecureRegistry = errors.New("plain HTTP to a registry not marked insecure")

// httpPolicy refuses plain HTTP to registries the operator did not mark
// insecure. go-containerregistry falls back to HTTP for any RFC 1918
// address; Shoal, like Docker, allows it only for loopback and for
// Config.InsecureRegistries, so a private address cannot silently
// downgrade a pull.
type httpPolicy struct {
	next    http.RoundTripper
	allowed func(host string) bool
}

func (p httpPolicy) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !p.allowed(req.URL.Host) {
		return nil, fmt.Errorf("%w: registry %s answers only over plain HTTP; if that is intended, start shoald with --insecure-registry %s", ErrInsecureRegistry, req.URL.Host, req.URL.Host)
	}
	return p.next.RoundTrip(req)
}

// plainHTTPAllowed reports whether host may be reached over plain HTTP.
func (s *Store) plainHTTPAllowed(host string) bool {
	if s.insecure[normaliseRegistry(host)] {
		return true
	}
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Pull fetches ref from its registry (auth from authn.DefaultKeychain;
// plain HTTP for Config.InsecureRegistries), reporting progress lines
// through progress (may be nil). A tag reference is recorded as naming the
// image; a digest reference is not, but Get finds the image by that digest
// afterwards, also when it is the digest of a multi-platform index (the
// image for this host's platform is pulled). A digest reference already
// present locally is returned without contacting the registry; layers
// already unpacked are never downloaded again.
func (s *Store) Pull(ctx context.Context, ref string, progress func(msg string)) (*Image, error) {
	if progress == nil {
		progress = func(string) {}
	}
	r, err := s.parse(ref)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	norm := normalise(r)
	if d, ok := digestOf(r); ok {
		// Content named by digest cannot change: an image loaded from an
		// archive serves a digest-pinned service without any registry.
		if img, err := s.getDigest(d); err == nil {
			progress(fmt.Sprintf("%s: already present", norm))
			return img, nil
		}
	}
	progress("resolving " + norm)
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(hostPlatform()),
		remote.WithTransport(httpPolicy{next: remote.DefaultTransport, allowed: s.plainHTTPAllowed}),
	}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", norm, err)
	}
	var aliases []string
	if desc.MediaType.IsIndex() {
		aliases = []string{desc.Digest.String()}
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", norm, err)
	}
	var refs []string
	if _, isDigest := digestOf(r); !isDigest {
		refs = []string{norm}
	}
	out, err := s.importImage(ctx, img, refs, aliases, progress)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", norm, err)
	}
	progress(fmt.Sprintf("pulled %s: digest %s", norm, out.Digest))
	s.log.Info("image pulled", "ref", norm, "digest", out.Digest)
	return out, nil
}
