package ca

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
)

const (
	// joinTokenPrefix and joinTokenVersion start every token so that a
	// pasted token is recognisable and the format can change later.
	joinTokenPrefix  = "SHOALTKN"
	joinTokenVersion = "1"

	// joinTokenSecretLen base-36 characters carry about 129 bits of
	// randomness: unguessable, yet short enough to paste.
	joinTokenSecretLen = 25

	base36 = "0123456789abcdefghijklmnopqrstuvwxyz"

	// digestPrefix is how Digest names its hash; tokens carry only the hex.
	digestPrefix = "sha256:"
)

// JoinToken is a parsed join token.
type JoinToken struct {
	// CADigest is the pinned root's digest, in the form RootCA.Digest
	// returns ("sha256:<hex>").
	CADigest string
	// Secret is the random part the managers compare to find the role.
	Secret string
}

// GenerateJoinToken makes a new random token for role, pinning the root
// whose Digest is rootCADigest. The role is not readable from the token: the
// managers keep one current token per role and find the role by matching
// (see MatchJoinToken), so a worker token cannot be edited into a manager one.
func GenerateJoinToken(rootCADigest string, role Role) (string, error) {
	if !role.Valid() {
		return "", fmt.Errorf("generate join token: %w %q", ErrInvalidRole, role)
	}
	hexDigest, ok := strings.CutPrefix(rootCADigest, digestPrefix)
	if !ok || !isSHA256Hex(hexDigest) {
		return "", fmt.Errorf("generate join token: CA digest %q is not sha256:<64 hex>", rootCADigest)
	}
	hexDigest = strings.ToLower(hexDigest)
	secret := make([]byte, joinTokenSecretLen)
	max := big.NewInt(int64(len(base36)))
	for i := range secret {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", fmt.Errorf("generate join token: %w", err)
		}
		secret[i] = base36[n.Int64()]
	}
	return strings.Join([]string{joinTokenPrefix, joinTokenVersion, hexDigest, string(secret)}, "-"), nil
}

// ParseJoinToken checks a token's form. Errors wrap ErrMalformedJoinToken.
func ParseJoinToken(tok string) (JoinToken, error) {
	parts := strings.Split(strings.TrimSpace(tok), "-")
	if len(parts) != 4 || parts[0] != joinTokenPrefix {
		return JoinToken{}, ErrMalformedJoinToken
	}
	if parts[1] != joinTokenVersion {
		return JoinToken{}, fmt.Errorf("%w: unsupported version %q", ErrMalformedJoinToken, parts[1])
	}
	if !isSHA256Hex(parts[2]) {
		return JoinToken{}, fmt.Errorf("%w: CA digest is not 64 hex characters", ErrMalformedJoinToken)
	}
	if len(parts[3]) != joinTokenSecretLen || strings.Trim(parts[3], base36) != "" {
		return JoinToken{}, fmt.Errorf("%w: secret is not %d characters of [0-9a-z]", ErrMalformedJoinToken, joinTokenSecretLen)
	}
	return JoinToken{CADigest: digestPrefix + strings.ToLower(parts[2]), Secret: parts[3]}, nil
}

// String formats the token as GenerateJoinToken does.
func (t JoinToken) String() string {
	return strings.Join([]string{joinTokenPrefix, joinTokenVersion, strings.TrimPrefix(t.CADigest, digestPrefix), t.Secret}, "-")
}

// VerifyCA checks that the root certificate a joining host received is the
// one its token pins. Without this a host could be made to join (and send
// its secrets to) an impostor cluster.
func VerifyCA(certPEM []byte, tok JoinToken) error {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return fmt.Errorf("verify cluster CA: %w", err)
	}
	if !digestEqual(digestDER(cert.Raw), tok.CADigest) {
		return fmt.Errorf("verify cluster CA: %w", ErrCAMismatch)
	}
	return nil
}

// MatchJoinToken finds which of the cluster's current tokens presented is,
// comparing in constant time so the secrets do not leak through timing.
// current maps each role to its token (as GenerateJoinToken returned it);
// the result wraps ErrMalformedJoinToken or ErrInvalidJoinToken on failure.
func MatchJoinToken(presented string, current map[Role]string) (Role, error) {
	p, err := ParseJoinToken(presented)
	if err != nil {
		return "", err
	}
	// Visit every role regardless of matches to keep timing independent
	// of which (if any) token matched.
	var found Role
	for _, role := range []Role{RoleWorker, RoleManager} {
		c, ok := current[role]
		if !ok {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(p.String()), []byte(strings.TrimSpace(c))) == 1 {
			found = role
		}
	}
	if found == "" {
		return "", ErrInvalidJoinToken
	}
	return found, nil
}

// digestEqual compares two digests in constant time.
func digestEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(strings.ToLower(a)), []byte(strings.ToLower(b))) == 1
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
