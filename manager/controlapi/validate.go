package controlapi

import (
	"crypto/rand"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/scheduler"
)

// serviceNamePattern is what a service name must match: it becomes a DNS
// label in service discovery, hence the 63-character limit.
var serviceNamePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

const (
	// DefaultReplicas is the replica count of a service whose spec names no
	// mode, as in Docker.
	DefaultReplicas = 1
	// nameSuffixLen is the length of the random suffix of a generated
	// service name: 36^5 (60 million) names per image keep collisions rare,
	// short enough to type.
	nameSuffixLen = 5
	// maxSignal is the highest Linux signal number (SIGRTMAX).
	maxSignal = 64
)

// invalid returns an InvalidArgument status naming the field.
func invalid(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "invalid %s: %s", field, fmt.Sprintf(format, args...))
}

// normalizeSpec validates spec and fills in its defaults in place: a missing
// mode becomes replicated with DefaultReplicas. An empty name is left empty
// (CreateService generates one; UpdateService keeps the current one). Errors
// are InvalidArgument statuses naming the field and what was expected.
func normalizeSpec(spec *shoalpb.ServiceSpec) error {
	if spec == nil {
		return status.Error(codes.InvalidArgument, "invalid spec: a service spec is required")
	}
	if n := spec.GetName(); n != "" && !serviceNamePattern.MatchString(n) {
		return invalid("name", "%q must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", n)
	}
	for k := range spec.GetLabels() {
		if k == "" {
			return invalid("labels", "label keys must not be empty")
		}
	}
	for _, c := range spec.GetPlacement().GetConstraints() {
		if _, err := scheduler.ParseConstraint(c); err != nil {
			return invalid("placement", "%v", err)
		}
	}
	c := spec.GetContainer()
	if c.GetImage() == "" {
		return invalid("container.image", "an image is required")
	}
	if _, err := name.ParseReference(c.GetImage()); err != nil {
		return invalid("container.image", "image %q is not a valid reference: %v", c.GetImage(), err)
	}
	for i, e := range c.GetEnv() {
		key, _, ok := strings.Cut(e, "=")
		if !ok || key == "" {
			return invalid(fmt.Sprintf("container.env[%d]", i), "%q must be KEY=VALUE with a non-empty KEY", e)
		}
		if strings.ContainsAny(key, " \t\n\x00") {
			return invalid(fmt.Sprintf("container.env[%d]", i), "key %q must not contain whitespace or NUL", key)
		}
	}
	for k := range c.GetLabels() {
		if k == "" {
			return invalid("container.labels", "label keys must not be empty")
		}
	}
	if sig := c.GetStopSignal(); sig != "" {
		if _, err := parseSignal(sig); err != nil {
			return invalid("container.stop_signal", "%v", err)
		}
	}
	if g := c.GetStopGracePeriod(); g != nil {
		if err := g.CheckValid(); err != nil {
			return invalid("container.stop_grace_period", "%v", err)
		}
		if g.AsDuration() < 0 {
			return invalid("container.stop_grace_period", "%v must not be negative", g.AsDuration())
		}
	}
	if spec.GetMode() == nil {
		spec.Mode = &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: DefaultReplicas}}
	}
	if m, ok := spec.GetMode().(*shoalpb.ServiceSpec_Replicated); ok && m.Replicated == nil {
		m.Replicated = &shoalpb.ReplicatedService{Replicas: DefaultReplicas}
	}
	if m, ok := spec.GetMode().(*shoalpb.ServiceSpec_Global); ok && m.Global == nil {
		m.Global = &shoalpb.GlobalService{}
	}
	return nil
}

// parseSignal accepts "SIGTERM", "TERM" (any case) or "15".
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > maxSignal {
			return 0, fmt.Errorf("signal number %d is not between 1 and %d", n, maxSignal)
		}
		return unix.Signal(n), nil
	}
	up := strings.ToUpper(s)
	if !strings.HasPrefix(up, "SIG") {
		up = "SIG" + up
	}
	if sig := unix.SignalNum(up); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("%q is not a signal name (like SIGTERM or TERM) or number (like 15)", s)
}

// generateName returns a service name made of the image's last path element
// and a random suffix, e.g. "nginx-k3x9z" for docker.io/library/nginx:1.27.
// The image must already be validated.
func generateName(image string) string {
	base := "service"
	if ref, err := name.ParseReference(image); err == nil {
		repo := ref.Context().RepositoryStr()
		base = repo[strings.LastIndex(repo, "/")+1:]
	}
	// Repository names may hold '_', '.' and '-' runs, all allowed; only the
	// length needs bounding.
	base = strings.TrimLeft(base, "_.-")
	if base == "" {
		base = "service"
	}
	if limit := 63 - 1 - nameSuffixLen; len(base) > limit {
		base = base[:limit]
	}
	return base + "-" + randomSuffix(nameSuffixLen)
}

func randomSuffix(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
