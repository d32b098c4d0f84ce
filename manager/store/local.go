package store

import (
	"context"
	"sync"
)

// LocalProposer applies directly with an incrementing index; for tests and
// tools only. It is not replicated and not durable.
type LocalProposer struct {
	s *Store

	mu    sync.Mutex // guards following; serialises applies like Raft does
	index uint64
}

// NewLocalProposer returns a proposer applying to s, starting after s's
// current index.
func NewLocalProposer(s *Store) *LocalProposer {
	var index uint64
	s.View(func(tx ReadTx) { index = tx.Index() })
	return &LocalProposer{s: s, index: index}
}

// Propose applies data at the next index and returns Apply's error. A
// refused entry still uses up its index, as a committed Raft entry would.
func (p *LocalProposer) Propose(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// After a Restore the store may be ahead of this proposer.
	p.index = max(p.index, p.s.view.Load().index) + 1
	return p.s.Apply(p.index, data)
}
