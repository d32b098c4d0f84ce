package image

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"unicode"

	"github.com/google/go-containerregistry/pkg/name"
)

// dockerHub is how references name Docker Hub once normalised; the
// registry library spells it "index.docker.io" internally.
const dockerHub = "docker.io"

// maxNameLen is the distribution spec's limit on a repository name.
const maxNameLen = 255

// Grammar of docker/distribution's reference package, which registries and
// the Docker CLI enforce; go-containerregistry alone is more lenient (it
// accepts "a..b" or "-a"), and a name a registry will later refuse is
// better refused when the service is created.
var (
	pathComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE           = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestRE        = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	hostRE          = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?$`)
)

// ParseReference validates a reference and returns its normalised form
// ("busybox" -> "docker.io/library/busybox:latest"; digest references keep
// only the digest: "busybox:1@sha256:..." -> "docker.io/library/busybox@sha256:...").
// Errors wrap ErrInvalidReference and say what is malformed.
func ParseReference(ref string) (string, error) {
	r, err := parseRef(ref, nil)
	if err != nil {
		return "", err
	}
	return normalise(r), nil
}

// parse parses ref, marking the registry insecure when configured so.
func (s *Store) parse(ref string) (name.Reference, error) {
	return parseRef(ref, func(host string) bool { return s.insecure[normaliseRegistry(host)] })
}

// parseRef validates ref against the distribution grammar with explanatory
// errors, then parses it with go-containerregistry. insecure (may be nil)
// says whether a registry host is reached over plain HTTP.
func parseRef(ref string, insecure func(host string) bool) (name.Reference, error) {
	if err := checkRef(ref); err != nil {
		return nil, fmt.Errorf("%w %q: %s", ErrInvalidReference, ref, err.Error())
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidReference, ref, err)
	}
	if insecure != nil && insecure(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(ref, name.Insecure); err != nil {
			return nil, fmt.Errorf("%w %q: %v", ErrInvalidReference, ref, err)
		}
	}
	return r, nil
}

// checkRef explains what is wrong with a malformed reference.
func checkRef(ref string) error {
	if ref == "" {
		return fmt.Errorf("empty reference")
	}
	if strings.IndexFunc(ref, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("contains whitespace or control characters")
	}
	if strings.Contains(ref, "://") {
		return fmt.Errorf("must not contain a URL scheme")
	}
	rest, dig, hasDigest := strings.Cut(ref, "@")
	if hasDigest {
		if strings.Contains(dig, "@") {
			return fmt.Errorf("more than one '@'")
		}
		if !digestRE.MatchString(dig) {
			return fmt.Errorf("digest %q is not \"sha256:\" followed by 64 lowercase hex digits", dig)
		}
	}
	repo := rest
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		repo = rest[:i]
		tag := rest[i+1:]
		if tag == "" {
			return fmt.Errorf("empty tag after ':'")
		}
		if !tagRE.MatchString(tag) {
			return fmt.Errorf("tag %q is invalid: up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", tag)
		}
	}
	if repo == "" {
		return fmt.Errorf("missing repository name")
	}
	path := repo
	if host, p, ok := strings.Cut(repo, "/"); ok && (host == "localhost" || strings.ContainsAny(host, ".:")) {
		if err := checkHost(host); err != nil {
			return err
		}
		path = p
	}
	if len(path) > maxNameLen {
		return fmt.Errorf("repository name longer than %d characters", maxNameLen)
	}
	for _, c := range strings.Split(path, "/") {
		switch {
		case c == "":
			return fmt.Errorf("empty path component in repository %q", path)
		case strings.ToLower(c) != c:
			return fmt.Errorf("repository name %q must be lowercase", path)
		case !pathComponentRE.MatchString(c):
			return fmt.Errorf("repository path component %q is invalid: use lowercase letters and digits joined by single '.', '_', '__' or '-' separators", c)
		}
	}
	return nil
}

// checkHost validates a registry "host[:port]", IPv6 hosts in brackets.
func checkHost(host string) error {
	if strings.HasPrefix(host, "[") {
		h, _, err := net.SplitHostPort(host)
		if err != nil {
			end := strings.IndexByte(host, ']')
			if end != len(host)-1 {
				return fmt.Errorf("registry %q is not a valid host[:port]", host)
			}
			h = host[1:end]
		}
		if ip := net.ParseIP(h); ip == nil || ip.To4() != nil {
			return fmt.Errorf("registry %q: bracketed host must be an IPv6 address", host)
		}
		return nil
	}
	if !hostRE.MatchString(host) {
		return fmt.Errorf("registry %q is not a valid host[:port]", host)
	}
	return nil
}

// normalise renders a parsed reference in the form the store indexes by.
func normalise(r name.Reference) string {
	repo := r.Context()
	base := normaliseRegistry(repo.RegistryStr()) + "/" + repo.RepositoryStr()
	switch v := r.(type) {
	case name.Digest:
		return base + "@" + v.DigestStr()
	case name.Tag:
		return base + ":" + v.TagStr()
	}
	return base + ":" + r.Identifier()
}

// normaliseRegistry maps Docker Hub's aliases to one spelling.
func normaliseRegistry(host string) string {
	if host == name.DefaultRegistry || host == dockerHub {
		return dockerHub
	}
	return host
}

// digestOf returns the digest of a digest reference.
func digestOf(r name.Reference) (string, bool) {
	d, ok := r.(name.Digest)
	if !ok {
		return "", false
	}
	return d.DigestStr(), true
}

// isDigest reports whether s is a bare "sha256:<hex>" digest.
func isDigest(s string) bool { return digestRE.MatchString(s) }
