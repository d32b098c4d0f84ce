// Package dns is Shoal's embedded DNS server: the resolver every container
// finds at 127.0.0.11:53 (UDP and TCP) inside its own network namespace, as
// in Docker.
//
// One Server runs per daemon. Add opens a container's listeners inside the
// container's network namespace and serves them until Remove or Close; the
// answers come from a Resolver the caller provides, normally a Table that
// the agent keeps up to date from the gossip endpoint table. The name rules
// (ParseName and Record.Answer) are:
//
//   - SERVICE answers the service's VIP on the network, or its ready task
//     addresses when the service's endpoint mode is dnsrr;
//   - tasks.SERVICE answers the ready task addresses;
//   - names are matched case-insensitively, with or without a trailing dot,
//     and only services on a network the container is attached to (its
//     Scope) are visible; the first network of the Scope that knows the
//     service answers.
//
// Answers to Shoal names carry the TTL shoalTTL (0: backends change at any
// time and the resolver is a loopback hop away), the AA bit, and no SOA, so
// an empty answer is not cached negatively either. Only A records are
// answered: the overlays are IPv4, so AAAA and every other type for a Shoal
// name get an empty NOERROR answer (the name exists, that type does not).
//
// A known name with no ready address gets an empty NOERROR answer, not
// NXDOMAIN: tasks.SERVICE or a dnsrr SERVICE with no ready task, or a
// VIP-mode SERVICE without a VIP yet. The name exists and will have
// addresses as soon as a task passes its healthcheck, while NXDOMAIN says
// that nothing exists at or below the name (RFC 8020) and sends stub
// resolvers on down their search list to names that may resolve somewhere
// else. A VIP-mode SERVICE with a VIP answers it even with no ready task:
// the VIP is stable, and the data plane refuses connections to it until a
// backend is ready. Names no visible service claims, tasks.X for an
// unknown X included, are not answered NXDOMAIN by Shoal: they may be
// real DNS names (tasks.dev is one), so they are forwarded, and the
// upstream's answer, typically NXDOMAIN, is relayed.
//
// Forwarding goes to the nameservers of the host's resolv.conf (by default
// /etc/resolv.conf, re-read when it changes), or to Config.Upstreams.
// The forwarding sockets are opened by the daemon itself, in the daemon's
// (host) network namespace, not the container's: a loopback upstream such
// as systemd-resolved's 127.0.0.53 therefore works, and a container
// reaches exactly the upstreams its host reaches. Each upstream gets
// ForwardTimeout per exchange, the list is tried ForwardAttempts times
// within 4.5 s (under glibc's 5 s wait, so the client sees our answer), a
// truncated UDP answer is fetched again over TCP, an upstream's SERVFAIL
// or REFUSED counts as a failure, and a query no upstream answers gets
// SERVFAIL. Forwarded answers are relayed as they are (TTLs included),
// truncated to the client's UDP buffer when they do not fit it.
//
// ContainerResolvConf writes the resolv.conf a container gets:
// "nameserver 127.0.0.11" plus the host's search and options lines.
//
// Contracts:
//   - The calling goroutine's thread never changes namespace: listeners are
//     opened by a goroutine locked to an OS thread that enters the
//     container's namespace and is then discarded. A socket keeps the
//     namespace it was created in.
//   - Add, SetScope, Remove and Close are serialised; queries are served
//     concurrently with them and with updates of the Table.
//   - A container's listeners keep its network namespace alive: Remove the
//     container before (or when) its namespace is deleted.
//   - Remove and Close cancel the container's in-flight forwards and wait
//     for every goroutine the container started.
//   - 127.0.0.11:53 is bound directly, so a process in the container that
//     binds port 53 on the wildcard address fails with EADDRINUSE. Docker
//     avoids that by DNATing 127.0.0.11:53 to random ports; Shoal does not
//     yet.
package dns
