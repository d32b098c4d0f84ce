// Package bridge is Shoal's node-local network driver: one Linux bridge per
// host with its own subnet, masquerade to the outside world, and one network
// namespace per container joined to the bridge by a veth pair.
//
// A container attached here is reachable from its host (the bridge carries the
// gateway address) and from the other containers on the bridge, and it
// reaches the host's outside world through nftables masquerade. Overlay
// networks live beside this package in overlay/.
//
// The driver's PortTable publishes host ports on containers (nftables DNAT
// in a table of its own, "shoal-ports-<bridge>"): reachable on every host
// address, from other hosts, from the host itself (127.0.0.1 included) and
// from containers. It keeps no state: the caller gives it the full set of
// mappings each time. A published port shadows a host process listening on
// the same port, as Docker's do without their userland proxy; CheckFree
// lets a caller refuse a port that a process is bound to already.
//
// Everything the driver creates is recorded under Config.StateDir (the named
// netns files and the address allocations) so that a restarted daemon can
// find, reuse or clean up what already exists. Every operation is idempotent.
//
// Contracts:
//   - All host-side kernel operations go through netlink and nftables handles
//     bound to Config.HostNetNS; the calling goroutine's thread never changes
//     namespace (work that must run inside a namespace runs on a locked OS
//     thread that is moved back, or discarded if that fails).
//   - One Driver at a time per StateDir: methods of a Driver are serialised,
//     but two Drivers on the same StateDir are not coordinated.
package bridge
