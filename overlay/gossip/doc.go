// Package gossip is the hosts' membership and liveness layer: a thin
// wrapper around hashicorp/memberlist (SWIM with Lifeguard). Every shoald
// that is part of a cluster runs one Member, named by its node id, on the
// gossip port of its advertise address; members find each other through
// seed addresses (the managers') and tell their owner, over Events, which
// members joined, failed or left.
//
// It is the transport of the endpoint table DESIGN.md describes (each host
// announcing its own endpoints); today it carries liveness only, and the
// memberlist delegate is versioned so that the table can be added without
// breaking members of the previous version.
//
// Contracts:
//   - New binds the port; Run gossips until its context ends, then leaves
//     the cluster gracefully (others see the member as left, not failed)
//     and releases the port before it returns. A Member runs once.
//   - Events must be drained: it is fed from an unbounded queue so that
//     memberlist is never blocked, and closed when Run returns.
//   - A partition heals by itself: while a seed is not seen alive, the
//     member joins it again every reconnectInterval.
//   - Gossip is unencrypted unless Config.SecretKey is set; then every
//     member must hold the same key.
package gossip
