package image

import (
	"errors"
	"strings"
	"testing"
)

func TestParseReference(t *testing.T) {
	const dig = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name    string
		ref     string
		want    string
		wantErr string // substring of the explanation; "" means valid
	}{
		{name: "short name", ref: "busybox", want: "docker.io/library/busybox:latest"},
		{name: "short name with tag", ref: "busybox:1.36", want: "docker.io/library/busybox:1.36"},
		{name: "docker hub user repo", ref: "shoal/testapp", want: "docker.io/shoal/testapp:latest"},
		{name: "docker.io explicit", ref: "docker.io/library/busybox:latest", want: "docker.io/library/busybox:latest"},
		{name: "docker.io without library", ref: "docker.io/busybox", want: "docker.io/library/busybox:latest"},
		{name: "index.docker.io alias", ref: "index.docker.io/library/busybox", want: "docker.io/library/busybox:latest"},
		{name: "registry with port", ref: "127.0.0.1:5000/shoal/testapp:v2", want: "127.0.0.1:5000/shoal/testapp:v2"},
		{name: "localhost registry", ref: "localhost/app", want: "localhost/app:latest"},
		{name: "deep path and separators", ref: "reg.example.com/a/b_c/d--e/f.g:1.0-rc_1", want: "reg.example.com/a/b_c/d--e/f.g:1.0-rc_1"},
		{name: "digest", ref: "busybox@" + dig, want: "docker.io/library/busybox@" + dig},
		{name: "tag and digest keeps digest", ref: "busybox:1.36@" + dig, want: "docker.io/library/busybox@" + dig},
		{name: "uppercase repository", ref: "UPPER/Case", wantErr: "must be lowercase"},
		{name: "space", ref: "a b", wantErr: "whitespace"},
		{name: "missing name before tag", ref: ":tag", wantErr: "missing repository name"},
		{name: "empty", ref: "", wantErr: "empty reference"},
		{name: "empty tag", ref: "busybox:", wantErr: "empty tag"},
		{name: "bad tag", ref: "busybox:-x", wantErr: "tag \"-x\" is invalid"},
		{name: "double separator", ref: "x/a..b", wantErr: "path component \"a..b\""},
		{name: "leading separator", ref: "-abc", wantErr: "path component \"-abc\""},
		{name: "empty component", ref: "a//b", wantErr: "empty path component"},
		{name: "short digest", ref: "busybox@sha256:abc", wantErr: "64 lowercase hex"},
		{name: "two at signs", ref: "a@" + dig + "@" + dig, wantErr: "more than one '@'"},
		{name: "url scheme", ref: "https://reg.example.com/app", wantErr: "URL scheme"},
		{name: "bad registry", ref: "reg_x.example.com:abc/app", wantErr: "not a valid host"},
		{name: "tab", ref: "busy\tbox", wantErr: "whitespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReference(tt.ref)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseReference(%q) = %q, want error containing %q", tt.ref, got, tt.wantErr)
				}
				if !errors.Is(err, ErrInvalidReference) {
					t.Errorf("error %v does not wrap ErrInvalidReference", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not explain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseReference(%q): %v", tt.ref, err)
			}
			if got != tt.want {
				t.Errorf("ParseReference(%q) = %q, want %q", tt.ref, got, tt.want)
			}
			// Normalised forms are fixed points.
			again, err := ParseReference(got)
			if err != nil || again != got {
				t.Errorf("ParseReference(%q) = %q, %v; want it unchanged", got, again, err)
			}
		})
	}
}
