package ca

import (
	"errors"
	"strings"
	"testing"
)

func TestJoinTokenRoundTrip(t *testing.T) {
	root := newTestRoot(t, "c")
	for _, role := range []Role{RoleWorker, RoleManager} {
		t.Run(string(role), func(t *testing.T) {
			tok, err := GenerateJoinToken(root.Digest(), role)
			if err != nil {
				t.Fatalf("GenerateJoinToken: %v", err)
			}
			if !strings.HasPrefix(tok, "SHOALTKN-1-") {
				t.Fatalf("token %q lacks prefix", tok)
			}
			jt, err := ParseJoinToken(tok)
			if err != nil {
				t.Fatalf("ParseJoinToken(%q): %v", tok, err)
			}
			if jt.CADigest != root.Digest() || len(jt.Secret) != 25 {
				t.Fatalf("parsed = %+v, want digest %s and a 25-char secret", jt, root.Digest())
			}
			if jt.String() != tok {
				t.Fatalf("String() = %q, want %q", jt.String(), tok)
			}
			if err := VerifyCA(root.CertPEM(), jt); err != nil {
				t.Fatalf("VerifyCA with the pinned root: %v", err)
			}
		})
	}
	a, _ := GenerateJoinToken(root.Digest(), RoleWorker)
	b, _ := GenerateJoinToken(root.Digest(), RoleWorker)
	if a == b {
		t.Fatal("two generated tokens are equal: secret is not random")
	}
}

func TestGenerateJoinTokenRejects(t *testing.T) {
	root := newTestRoot(t, "c")
	tests := []struct {
		name   string
		digest string
		role   Role
	}{
		{"bad role", root.Digest(), "boss"},
		{"digest without prefix", strings.TrimPrefix(root.Digest(), "sha256:"), RoleWorker},
		{"short digest", "sha256:abcd", RoleWorker},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tok, err := GenerateJoinToken(tt.digest, tt.role); err == nil {
				t.Fatalf("GenerateJoinToken = %q, want error", tok)
			}
		})
	}
}

func TestParseJoinTokenMalformed(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	secret := strings.Repeat("x", 25)
	tests := []struct {
		name string
		tok  string
	}{
		{"empty", ""},
		{"swarm token", "SWMTKN-1-" + hex64 + "-" + secret},
		{"wrong version", "SHOALTKN-2-" + hex64 + "-" + secret},
		{"missing secret", "SHOALTKN-1-" + hex64},
		{"extra part", "SHOALTKN-1-" + hex64 + "-" + secret + "-x"},
		{"short digest", "SHOALTKN-1-abcd-" + secret},
		{"non-hex digest", "SHOALTKN-1-" + strings.Repeat("zz", 32) + "-" + secret},
		{"short secret", "SHOALTKN-1-" + hex64 + "-abc"},
		{"secret bad chars", "SHOALTKN-1-" + hex64 + "-" + strings.Repeat("X", 25)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseJoinToken(tt.tok)
			if !errors.Is(err, ErrMalformedJoinToken) {
				t.Fatalf("ParseJoinToken(%q) err = %v, want ErrMalformedJoinToken", tt.tok, err)
			}
			if !strings.Contains(err.Error(), "expected SHOALTKN-1-<ca digest>-<secret>") {
				t.Fatalf("error %q does not show the expected form", err)
			}
		})
	}
}

func TestVerifyCAWrongDigest(t *testing.T) {
	root := newTestRoot(t, "c")
	impostor := newTestRoot(t, "c")
	tok, err := GenerateJoinToken(root.Digest(), RoleWorker)
	if err != nil {
		t.Fatal(err)
	}
	jt, err := ParseJoinToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pem  []byte
		want error
	}{
		{"impostor CA with same cluster id", impostor.CertPEM(), ErrCAMismatch},
		{"garbage", []byte("nope"), ErrInvalidCertificate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := VerifyCA(tt.pem, jt); !errors.Is(err, tt.want) {
				t.Fatalf("VerifyCA err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestMatchJoinToken(t *testing.T) {
	root := newTestRoot(t, "c")
	worker, _ := GenerateJoinToken(root.Digest(), RoleWorker)
	manager, _ := GenerateJoinToken(root.Digest(), RoleManager)
	rotated, _ := GenerateJoinToken(root.Digest(), RoleWorker)
	current := map[Role]string{RoleWorker: worker, RoleManager: manager}
	tests := []struct {
		name     string
		tok      string
		wantRole Role
		wantErr  error
	}{
		{"worker", worker, RoleWorker, nil},
		{"manager", manager, RoleManager, nil},
		{"surrounding whitespace", " " + manager + "\n", RoleManager, nil},
		{"rotated away", rotated, "", ErrInvalidJoinToken},
		{"malformed", "SHOALTKN-1-x", "", ErrMalformedJoinToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role, err := MatchJoinToken(tt.tok, current)
			if !errors.Is(err, tt.wantErr) || role != tt.wantRole {
				t.Fatalf("MatchJoinToken = %q, %v; want %q, %v", role, err, tt.wantRole, tt.wantErr)
			}
		})
	}
}

func TestGenerateJoinTokenNormalisesDigest(t *testing.T) {
	root := newTestRoot(t, "c")
	upper := "sha256:" + strings.ToUpper(strings.TrimPrefix(root.Digest(), "sha256:"))
	tok, err := GenerateJoinToken(upper, RoleManager)
	if err != nil {
		t.Fatalf("GenerateJoinToken: %v", err)
	}
	role, err := MatchJoinToken(tok, map[Role]string{RoleManager: tok})
	if err != nil || role != RoleManager {
		t.Fatalf("MatchJoinToken of its own token = %q, %v", role, err)
	}
	jt, err := ParseJoinToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyCA(root.CertPEM(), jt); err != nil {
		t.Fatalf("VerifyCA: %v", err)
	}
}
