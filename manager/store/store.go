// Package store is the managers' in-memory state: nodes, services, tasks and
// the cluster object, kept in hashicorp/go-memdb and replicated through Raft.
//
// The Store is the Raft state machine. Reads (View) are lock-free snapshots
// of the last applied write. Writes are collected in a Batch by Update,
// proposed through a Proposer (the raft node), and applied by Apply on every
// manager in log order: a batch is applied entirely or refused entirely.
// Every applied write is also streamed to watchers (Watch), which is how the
// leader's components learn what to do next.
package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"
)

// Errors returned by Update (and Apply) when a batch is refused. They are
// wrapped with the object kind and id; check them with errors.Is.
var (
	// ErrVersionMismatch: an update or delete carried an expected version
	// that is not the stored object's current version (someone wrote it
	// since it was read).
	ErrVersionMismatch = errors.New("version mismatch")
	// ErrNotFound: an update or delete named an object that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNameConflict: a service was created or renamed to a name another
	// service already has.
	ErrNameConflict = errors.New("name conflict")
	// ErrExists: a create named an id that already exists.
	ErrExists = errors.New("already exists")
	// ErrInvalid: an action is malformed (no object, no id, unknown kind).
	ErrInvalid = errors.New("invalid store action")
	// ErrNoProposer: Update was called before SetProposer.
	ErrNoProposer = errors.New("store has no proposer")
)

// Proposer replicates data and returns after it has been applied to this
// store, with the error Apply returned for it (raft.Node implements it).
type Proposer interface {
	Propose(ctx context.Context, data []byte) error
}

// Store is the managers' in-memory state. Create it with New; wire it to
// Raft with SetProposer before any Update.
type Store struct {
	// view is the state as of the last applied write; readers load it
	// without locking.
	view atomic.Pointer[view]
	// proposer is set once at startup.
	proposer atomic.Pointer[proposerBox]
	// now is the proposer-side clock for Meta timestamps.
	now func() time.Time

	mu       sync.Mutex   // guards following; serialises Apply/Restore with Watch registration
	db       *memdb.MemDB // the write side; view holds snapshots of it
	watchers map[*watcher]struct{}
}

// view is one immutable, consistent state of the store.
type view struct {
	db    *memdb.MemDB
	index uint64
}

// proposerBox lets an interface value live in an atomic.Pointer.
type proposerBox struct{ p Proposer }

// New returns an empty store whose batches are stamped with time.Now.
func New() *Store {
	return NewWithClock(nil)
}

// NewWithClock returns an empty store whose batches take their Meta
// timestamps from now (nil means time.Now); for tests with a fake clock.
func NewWithClock(now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	db := newDB()
	s := &Store{now: now, db: db, watchers: make(map[*watcher]struct{})}
	s.view.Store(&view{db: db.Snapshot()})
	return s
}

// newDB returns an empty database with the store's schema; the schema is
// static, so an error here is a programming error.
func newDB() *memdb.MemDB {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		panic(fmt.Sprintf("store: invalid memdb schema: %v", err))
	}
	return db
}

// SetProposer wires the store to Raft. It is done once at startup, before
// any Update.
func (s *Store) SetProposer(p Proposer) {
	s.proposer.Store(&proposerBox{p: p})
}

// View runs fn on a consistent read-only view of the last applied state.
// The view stays valid (and unchanging) for as long as fn holds it.
func (s *Store) View(fn func(tx ReadTx)) {
	v := s.view.Load()
	fn(&readTx{txn: v.db.Txn(false), index: v.index})
}

// Update runs fn on a fresh read view and proposes the batch it fills
// (nothing when empty or when fn fails), returning after the batch has been
// applied. An error from fn is returned unchanged. A refused batch returns an
// error wrapping ErrVersionMismatch, ErrNotFound, ErrNameConflict, ErrExists
// or ErrInvalid; otherwise the proposer's error (e.g. raft.ErrNotLeader) is
// returned. When the proposer fails for another reason (ctx ended, leader
// lost) the batch may or may not have been applied.
func (s *Store) Update(ctx context.Context, fn func(tx ReadTx, b *Batch) error) error {
	box := s.proposer.Load()
	if box == nil || box.p == nil {
		return ErrNoProposer
	}
	b := &Batch{now: s.now()}
	var fnErr error
	s.View(func(tx ReadTx) { fnErr = fn(tx, b) })
	if fnErr != nil {
		return fnErr
	}
	if b.Len() == 0 {
		return nil
	}
	data, err := b.marshal()
	if err != nil {
		return fmt.Errorf("marshal store batch: %w", err)
	}
	return box.p.Propose(ctx, data)
}
