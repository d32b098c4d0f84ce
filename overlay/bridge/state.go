package bridge

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

const (
	// stateFile holds the allocations, rewritten atomically on every change.
	stateFile = "endpoints.json"
	// stateVersion is bumped on an incompatible change of the file format.
	stateVersion = 1
)

// state is the persisted allocation table of a driver.
type state struct {
	Version int `json:"version"`
	// Subnet the addresses were allocated from.
	Subnet string `json:"subnet,omitempty"`
	// Last is the most recently allocated address: allocation continues after
	// it, so a released address is not handed out again right away (a
	// late packet or a stale ARP entry then cannot reach the wrong container).
	Last netip.Addr `json:"last,omitzero"`
	// Endpoints maps an endpoint id to its address (without prefix length).
	Endpoints map[string]netip.Addr `json:"endpoints"`
}

// loadState reads the state file; a missing file is an empty state.
func loadState(path string) (*state, error) {
	st := &state{Version: stateVersion, Endpoints: map[string]netip.Addr{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read bridge state %s: %w", path, err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("parse bridge state %s: %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("parse bridge state %s: unsupported version %d", path, st.Version)
	}
	if st.Endpoints == nil {
		st.Endpoints = map[string]netip.Addr{}
	}
	return st, nil
}

// save writes the state atomically: temp file, fsync, rename, fsync of the
// directory, so a crash leaves either the old or the new table, never a torn
// one, and a completed save survives power loss.
func (st *state) save(path string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode bridge state: %w", err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write bridge state %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write bridge state %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync bridge state %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close bridge state %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace bridge state %s: %w", path, err)
	}
	df, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync bridge state dir %s: %w", dir, err)
	}
	defer df.Close()
	if err := df.Sync(); err != nil {
		return fmt.Errorf("sync bridge state dir %s: %w", dir, err)
	}
	return nil
}

// allocate picks the next free address of subnet after st.Last, wrapping
// around, skipping the network address, the gateway (first address) and the
// broadcast address, records it for id and returns it. It only changes st.
func (st *state) allocate(subnet netip.Prefix, id string) (netip.Addr, error) {
	subnet = subnet.Masked()
	network := subnet.Addr()
	gateway := network.Next()
	first := gateway.Next()
	broadcast := lastAddr(subnet)
	used := make(map[netip.Addr]bool, len(st.Endpoints))
	for _, a := range st.Endpoints {
		used[a] = true
	}
	a := st.Last
	if !a.IsValid() || !subnet.Contains(a) {
		a = gateway // so the first candidate is the first container address
	}
	// Usable container addresses: all but network, gateway and broadcast.
	usable := uint64(1)<<(32-subnet.Bits()) - 3
	for range usable {
		a = a.Next()
		if !subnet.Contains(a) || a == broadcast {
			a = first
		}
		if !used[a] {
			st.Endpoints[id] = a
			st.Last = a
			st.Subnet = subnet.String()
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("allocate address in %s for %s: %w", subnet, id, ErrSubnetFull)
}

// lastAddr returns the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
