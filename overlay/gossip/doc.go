// Package gossip is the hosts' membership, liveness and endpoint table: a
// thin wrapper around hashicorp/memberlist (SWIM with Lifeguard). Every
// shoald that is part of a cluster runs one Member, named by its node id,
// on the gossip port of its advertise address; members find each other
// through seed addresses (the managers') and tell their owner, over
// Events, which members joined, failed or left.
//
// The endpoint table is what the data plane is programmed from (DESIGN.md,
// "Planes and sources of truth"): every host announces its own NodeState
// (VTEP, WireGuard key and endpoint, and its containers' endpoints) with
// SetLocal, and learns everyone's through Table and TableChanges. It
// travels by gossip alone, host to host, so traffic keeps flowing when
// the managers lose quorum. Each state is versioned by its owner; a member
// keeps the newest version of each node's state, and drops the state of a
// node it has not seen alive for goneGrace. endpoints.go describes how
// states travel, table.go the rules, wire.go the encoding.
//
// Contracts:
//   - New binds the port; Run gossips until its context ends, then leaves
//     the cluster gracefully (others see the member as left, not failed)
//     and releases the port before it returns. A Member runs once.
//   - Events must be drained: it is fed from an unbounded queue so that
//     memberlist is never blocked, and closed when Run returns.
//   - TableChanges need not be drained: it holds one pending signal and
//     is never closed. Table returns copies.
//   - SetLocal may be called before Run (the state goes out once Run
//     joins others); states are dropped after goneGrace only while Run
//     runs.
//   - A partition heals by itself: while a seed is not seen alive, the
//     member joins it again every reconnectInterval; the join exchanges
//     the whole table.
//   - Gossip is unencrypted unless Config.SecretKey is set; then every
//     member must hold the same key. Unencrypted, any host that reaches
//     the gossip port can announce endpoints.
package gossip
