package ca

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeTimers is a controllable clock for Renewer: each After call is
// reported on waits, and fires when the test sends on fire.
type fakeTimers struct {
	mu  sync.Mutex // guards following
	now time.Time

	waits chan time.Duration
	fire  chan time.Time
}

func newFakeTimers(now time.Time) *fakeTimers {
	// waits is buffered so a renewer never blocks in After, even when
	// a failed test stops reading: cancelling its context then stops it.
	return &fakeTimers{now: now, waits: make(chan time.Duration, 16), fire: make(chan time.Time)}
}

func (f *fakeTimers) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeTimers) set(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = now
}

func (f *fakeTimers) After(d time.Duration) <-chan time.Time {
	f.waits <- d
	return f.fire
}

// nextWait returns the duration of the renewer's next wait.
func (f *fakeTimers) nextWait(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-f.waits:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("renewer did not wait")
		return 0
	}
}

// savedNode saves fresh credentials for nodeID in a new Store and returns it
// with a KeyPair holding them.
func savedNode(t *testing.T, root *RootCA, nodeID string, role Role) (Store, *KeyPair, Credentials) {
	t.Helper()
	creds := issueTestNode(t, root, nodeID, role)
	s := Store{Dir: t.TempDir()}
	if err := s.Save(creds); err != nil {
		t.Fatal(err)
	}
	return s, NewKeyPair(tlsCert(t, creds)), creds
}

func TestRenewerRun(t *testing.T) {
	root := newTestRoot(t, "c")
	store, kp, _ := savedNode(t, root, "n1", RoleWorker)
	clock := newFakeTimers(testNow)

	var mu sync.Mutex // guards following
	failNext := true
	var renewed []Identity

	r, err := NewRenewer(RenewerConfig{
		Store:   store,
		KeyPair: kp,
		Request: func(_ context.Context, csr []byte) ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			if failNext {
				failNext = false
				return nil, errors.New("no leader")
			}
			return root.IssueNodeCertificate(csr, "n1", RoleManager, clock.Now())
		},
		OnRenew: func(id Identity) {
			mu.Lock()
			defer mu.Unlock()
			renewed = append(renewed, id)
		},
		Now:           clock.Now,
		After:         clock.After,
		RetryInterval: 7 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	renewAt := RenewalTime(kp.Get().Leaf)
	if d := clock.nextWait(t); d != renewAt.Sub(testNow) {
		t.Fatalf("first wait = %v, want until renewal time %v", d, renewAt.Sub(testNow))
	}
	// Due: the first request fails, so the renewer retries after the
	// retry interval without touching the certificate.
	clock.set(renewAt)
	clock.fire <- renewAt
	if d := clock.nextWait(t); d != 7*time.Second {
		t.Fatalf("wait after failure = %v, want retry interval 7s", d)
	}
	if kp.Get().Leaf.Subject.OrganizationalUnit[0] != RoleWorker.OU() {
		t.Fatal("failed renewal changed the certificate")
	}
	// The retry succeeds; the next wait is until the new certificate's
	// renewal time.
	clock.set(renewAt.Add(7 * time.Second))
	clock.fire <- clock.Now()
	d := clock.nextWait(t)
	leaf := kp.Get().Leaf
	if want := RenewalTime(leaf).Sub(clock.Now()); d != want {
		t.Fatalf("wait after renewal = %v, want %v", d, want)
	}
	if leaf.Subject.CommonName != "n1" || leaf.Subject.OrganizationalUnit[0] != RoleManager.OU() {
		t.Fatalf("KeyPair holds %v, want n1 as manager", leaf.Subject)
	}
	loaded, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if stored := tlsCert(t, loaded).Leaf; !bytes.Equal(stored.Raw, leaf.Raw) {
		t.Fatal("the stored certificate is not the one in use")
	}
	mu.Lock()
	if len(renewed) != 1 || renewed[0].Role != RoleManager {
		t.Fatalf("OnRenew calls = %+v, want one with role manager", renewed)
	}
	mu.Unlock()

	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	done <- nil // for the cleanup
}

func TestRenewNowRejects(t *testing.T) {
	root := newTestRoot(t, "c")
	other := newTestRoot(t, "c")
	tests := []struct {
		name    string
		request RequestFunc
		want    error
	}{
		{"manager unreachable", func(context.Context, []byte) ([]byte, error) {
			return nil, errors.New("unreachable")
		}, nil},
		{"certificate from another CA", func(_ context.Context, csr []byte) ([]byte, error) {
			return other.IssueNodeCertificate(csr, "n1", RoleWorker, testNow)
		}, ErrInvalidCertificate},
		{"certificate for another node", func(_ context.Context, csr []byte) ([]byte, error) {
			return root.IssueNodeCertificate(csr, "n2", RoleWorker, testNow)
		}, ErrInvalidCertificate},
		{"certificate for another key", func(context.Context, []byte) ([]byte, error) {
			_, csr, err := NewNodeKey()
			if err != nil {
				return nil, err
			}
			return root.IssueNodeCertificate(csr, "n1", RoleWorker, testNow)
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store, kp, before := savedNode(t, root, "n1", RoleWorker)
			r, err := NewRenewer(RenewerConfig{Store: store, KeyPair: kp, Request: tt.request, Now: func() time.Time { return testNow }})
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.RenewNow(context.Background())
			if err == nil {
				t.Fatal("RenewNow succeeded, want error")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			after, err := store.Load()
			if err != nil || !bytes.Equal(after.CertPEM, before.CertPEM) || !bytes.Equal(after.KeyPEM, before.KeyPEM) {
				t.Fatalf("stored credentials changed after a failed renewal (load err %v)", err)
			}
			if kp.Get().Leaf.Subject.CommonName != "n1" {
				t.Fatal("KeyPair changed after a failed renewal")
			}
		})
	}
}
