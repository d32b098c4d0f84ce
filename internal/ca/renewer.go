package ca

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// DefaultRenewRetryInterval is how long a Renewer waits after a failed
// renewal before trying again: short enough to get through a leader
// election or a manager restart well inside the third of the validity left
// at RenewalTime, long enough not to hammer managers that are down.
const DefaultRenewRetryInterval = time.Minute

// RequestFunc asks a manager to sign csrPEM for the calling node and returns
// the new certificate. It is called over the node's current mTLS identity;
// the manager decides the id and role from it (a role may change on
// promotion or demotion).
type RequestFunc func(ctx context.Context, csrPEM []byte) (certPEM []byte, err error)

// RenewerConfig configures a Renewer. Store, KeyPair and Request are
// required.
type RenewerConfig struct {
	// Store holds the node's credentials; renewals are saved there before
	// they are used, so a restart never goes back to an older certificate.
	Store Store
	// KeyPair is updated after each renewal so TLS configs built with
	// KeyPair.ApplyTo use the new certificate.
	KeyPair *KeyPair
	// Request obtains a certificate for a CSR.
	Request RequestFunc
	// OnRenew, if set, is called with the new identity after each renewal
	// (e.g. to react to a role change). It must not block for long.
	OnRenew func(Identity)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// After waits like time.After; nil means time.After. Tests pass a fake.
	After func(time.Duration) <-chan time.Time
	// RetryInterval; zero means DefaultRenewRetryInterval.
	RetryInterval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Renewer keeps a node's certificate fresh: it renews at RenewalTime and
// retries on failure until the context ends.
type Renewer struct {
	cfg RenewerConfig
}

// NewRenewer checks cfg and fills in defaults.
func NewRenewer(cfg RenewerConfig) (*Renewer, error) {
	if cfg.KeyPair == nil || cfg.Request == nil || cfg.Store.Dir == "" {
		return nil, errors.New("new certificate renewer: Store, KeyPair and Request are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRenewRetryInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Renewer{cfg: cfg}, nil
}

// Run renews the certificate whenever it is due, until ctx is done; it then
// returns ctx.Err(). It starts no goroutines.
func (r *Renewer) Run(ctx context.Context) error {
	for {
		wait := RenewalTime(r.cfg.KeyPair.Get().Leaf).Sub(r.cfg.Now())
		if wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.cfg.After(wait):
			}
			continue // re-check: the certificate may have been replaced
		}
		if _, err := r.RenewNow(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.cfg.Logger.Warn("certificate renewal failed; will retry", "err", err, "retry_in", r.cfg.RetryInterval)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.cfg.After(r.cfg.RetryInterval):
			}
		}
	}
}

// RenewNow renews once, whatever the certificate's age: a fresh key (so a
// leaked old key dies with its certificate), a request, verification against
// the stored root, then Store and KeyPair. On error nothing is changed. It
// must not be called concurrently with itself or with Run.
func (r *Renewer) RenewNow(ctx context.Context) (Identity, error) {
	old, err := r.cfg.Store.Load()
	if err != nil {
		return Identity{}, fmt.Errorf("renew certificate: %w", err)
	}
	oldID, err := ParseNodeIdentity(old.CertPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("renew certificate: current: %w", err)
	}
	keyPEM, csrPEM, err := NewNodeKey()
	if err != nil {
		return Identity{}, fmt.Errorf("renew certificate: %w", err)
	}
	certPEM, err := r.cfg.Request(ctx, csrPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("renew certificate: request: %w", err)
	}
	pool, err := old.CertPool()
	if err != nil {
		return Identity{}, fmt.Errorf("renew certificate: %w", err)
	}
	id, err := VerifyNodeCertificate(certPEM, pool, r.cfg.Now())
	if err != nil {
		return Identity{}, fmt.Errorf("renew certificate: %w", err)
	}
	if id.NodeID != oldID.NodeID {
		return Identity{}, fmt.Errorf("renew certificate: %w: issued for node %s, this is %s", ErrInvalidCertificate, id.NodeID, oldID.NodeID)
	}
	next := Credentials{CACertPEM: old.CACertPEM, CertPEM: certPEM, KeyPEM: keyPEM}
	pair, err := next.TLSCertificate()
	if err != nil {
		return Identity{}, fmt.Errorf("renew certificate: %w", err)
	}
	if err := r.cfg.Store.Save(next); err != nil {
		return Identity{}, fmt.Errorf("renew certificate: %w", err)
	}
	r.cfg.KeyPair.Set(pair)
	r.cfg.Logger.Info("node certificate renewed", "node", id.NodeID, "role", id.Role, "not_after", id.NotAfter)
	if r.cfg.OnRenew != nil {
		r.cfg.OnRenew(id)
	}
	return id, nil
}
