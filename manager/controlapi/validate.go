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
	"google.golang.org/protobuf/types/known/durationpb"

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
	for i, p := range spec.GetPlacement().GetPreferences() {
		if err := scheduler.ValidateSpread(p.GetSpread()); err != nil {
			return invalid(fmt.Sprintf("placement.preferences[%d]", i), "%v", err)
		}
	}
	if err := validateRestartPolicy(spec.GetRestartPolicy()); err != nil {
		return err
	}
	if err := validatePorts(spec.GetEndpoint().GetPorts()); err != nil {
		return err
	}
	if err := validateResources(spec.GetContainer().GetResources()); err != nil {
		return err
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

// MinMemoryLimit is the smallest memory limit accepted: below it runc and
// the container's first process cannot even start (Docker refuses below
// 6 MiB for the same reason).
const MinMemoryLimit = 6 << 20

// validateRestartPolicy checks durations and the condition.
func validateRestartPolicy(p *shoalpb.RestartPolicy) error {
	if p == nil {
		return nil
	}
	if _, ok := shoalpb.RestartPolicy_Condition_name[int32(p.GetCondition())]; !ok {
		return invalid("restart_policy.condition", "%d: expected any, on-failure or none", p.GetCondition())
	}
	for _, f := range []struct {
		field string
		d     *durationpb.Duration
	}{{"restart_policy.delay", p.GetDelay()}, {"restart_policy.window", p.GetWindow()}} {
		if f.d == nil {
			continue
		}
		if err := f.d.CheckValid(); err != nil {
			return invalid(f.field, "%v", err)
		}
		if f.d.AsDuration() < 0 {
			return invalid(f.field, "%v must not be negative", f.d.AsDuration())
		}
	}
	return nil
}

// validatePorts checks published ports: numbers in range, and no host port
// published twice.
func validatePorts(ports []*shoalpb.PortConfig) error {
	seen := make(map[string]bool)
	for i, p := range ports {
		field := fmt.Sprintf("endpoint.ports[%d]", i)
		if p.GetTargetPort() == 0 || p.GetTargetPort() > 65535 {
			return invalid(field, "target port %d: expected 1 to 65535", p.GetTargetPort())
		}
		if p.GetPublishedPort() > 65535 {
			return invalid(field, "published port %d: expected 1 to 65535", p.GetPublishedPort())
		}
		if p.GetPublishMode() != shoalpb.PortConfig_PUBLISH_MODE_HOST {
			return invalid(field, "mode %s: only host mode is supported until the routing mesh exists", strings.ToLower(strings.TrimPrefix(p.GetPublishMode().String(), "PUBLISH_MODE_")))
		}
		if p.GetPublishedPort() == 0 {
			return invalid(field, "a host-mode port needs a published port")
		}
		key := fmt.Sprintf("%d/%v", p.GetPublishedPort(), p.GetProtocol())
		if seen[key] {
			return invalid(field, "port %d/%s is published twice", p.GetPublishedPort(), strings.ToLower(strings.TrimPrefix(p.GetProtocol().String(), "PROTOCOL_")))
		}
		seen[key] = true
	}
	return nil
}

// validateResources checks limits and reservations: none negative, a
// memory limit large enough to start a container, and reservations within
// the limits.
func validateResources(r *shoalpb.ResourceRequirements) error {
	if r == nil {
		return nil
	}
	lim, res := r.GetLimits(), r.GetReservations()
	for _, f := range []struct {
		field string
		v     int64
	}{
		{"resources.limits.nano_cpus", lim.GetNanoCpus()},
		{"resources.limits.memory_bytes", lim.GetMemoryBytes()},
		{"resources.reservations.nano_cpus", res.GetNanoCpus()},
		{"resources.reservations.memory_bytes", res.GetMemoryBytes()},
		{"resources.pids_limit", r.GetPidsLimit()},
	} {
		if f.v < 0 {
			return invalid(f.field, "%d must not be negative", f.v)
		}
	}
	if m := lim.GetMemoryBytes(); m > 0 && m < MinMemoryLimit {
		return invalid("resources.limits.memory_bytes", "%d bytes is below the minimum of %d (6 MiB)", m, MinMemoryLimit)
	}
	if l, v := lim.GetMemoryBytes(), res.GetMemoryBytes(); l > 0 && v > l {
		return invalid("resources.reservations.memory_bytes", "reservation %d is above the limit %d", v, l)
	}
	if l, v := lim.GetNanoCpus(), res.GetNanoCpus(); l > 0 && v > l {
		return invalid("resources.reservations.nano_cpus", "reservation %d is above the limit %d", v, l)
	}
	return nil
}
