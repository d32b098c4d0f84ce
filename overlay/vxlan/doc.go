// Package vxlan is the per-host data plane of Shoal's overlay networks: a
// Driver turns "this host has network N, these endpoints, and these remote
// endpoints on other hosts" into Linux bridges, vxlan devices or routed
// uplinks, veth pairs, static neighbour, forwarding and route entries, and
// nftables tables. The agent calls it; the manager's allocations (VNI,
// subnet, addresses, MACs), the knowledge of which endpoint runs on which
// host, and the host's WireGuard interface (overlay/wg) and its peers come
// from above.
//
// A plain network is VXLAN between hosts. An encrypted network
// (Network.Encrypted) carries no VXLAN at all: its traffic is routed at
// layer 3 through the host's WireGuard interface (Config.WireGuardIf).
//
// # Layout
//
// Everything carries the driver's Config.Prefix (see names.go for the exact
// names), so several simulated hosts on one machine never clash and a
// restarted driver recognises what it made:
//
//	host netns (Config.HostNetNS, the underlay)
//	  UDP socket *:4789 of every vxlan device (the kernel's, shared by VNIs)
//	  <WireGuardIf>       the caller's; a /32 route per remote endpoint of
//	                      every encrypted network (SetRemotes)
//	  <prefix>u<VNI hex>  host end of an encrypted network's uplink (alias =
//	                      network id): the route for its subnet
//	  nftables table inet <prefix>-wgnet (encrypted networks' isolation)
//	  nftables table inet <prefix>-vxlan (SetEncryptedVNIs)
//	sandbox netns per network, pinned at <NetNSDir>/<prefix>-ov-<network id>
//	  <prefix>br          bridge: gateway address, MAC 02:53:<gateway>, MTU;
//	                      proxy ARP on an encrypted network
//	  <prefix>x<VNI hex>  plain network: vxlan device (VNI, local VTEP, port,
//	                      nolearning, proxy); a bridge port; neighbour + FDB
//	                      entries per remote
//	  <prefix>up          encrypted network: sandbox end of the uplink; a /32
//	                      route per remote endpoint
//	  <prefix>v<hash>     sandbox end of a veth per endpoint (alias = id)
//	container netns (the caller's)
//	  <ifName>            container end: endpoint address and MAC, MTU,
//	                      only the subnet's connected route
//
// The vxlan device is created in the host netns and then moved into the
// sandbox. A vxlan device keeps the UDP socket, and so the routing and
// addresses, of the namespace it was created in: encapsulated packets leave
// and arrive on the underlay while the device itself is a port of a bridge
// no other network can reach. Docker's overlay driver does the same.
//
// The bridge's MAC is set from the gateway address; left alone a bridge takes
// its lowest port's MAC, which changes as containers come and go. Every host
// has the same gateway address and MAC on a network; containers use the
// gateway only on their own host.
//
// # MTU
//
// DefaultMTU (1450) is 1500 minus the 50 bytes VXLAN over IPv4 adds. The
// bridge, the vxlan device and both veth ends get the network's MTU: a
// container end with 1500 would send full-size frames the vxlan device
// cannot encapsulate within the underlay's 1500, and they would be dropped
// without an error (TCP hides it through its MSS; UDP and ICMP do not).
// An encrypted network's packets enter WireGuard as they are, so its
// default, EncryptedDefaultMTU (1420), is WireGuard's own; the bridge, the
// uplink and the veths get it. Network.MTU overrides either default; an
// encrypted network's must not exceed the WireGuard interface's.
//
// # Remote endpoints and ARP
//
// Nothing is learned or flooded. On a plain network the vxlan device has
// learning off and no default forwarding entry; SetRemotes programs, for
// each remote endpoint, a permanent neighbour entry (address → MAC) and a
// forwarding entry (MAC → VTEP) on it. With the proxy flag the vxlan device
// answers the containers' ARP requests itself from the neighbour entries and
// never sends ARP over the wire; an address with no entry gets no answer.
//
// On an encrypted network SetRemotes programs routes instead: in the
// sandbox, a /32 out of the uplink per remote address; in the host netns, a
// /32 on the WireGuard interface, whose peers' AllowedIPs (the caller's)
// pick the host. The sandbox routes, and the bridge answers by proxy ARP
// (proxy_delay 0, so at once) every address it has a route for through
// another interface: a container ARPing for a remote task in its own subnet
// gets the bridge's MAC and sends to it, and an address with no route gets
// no answer. Containers keep their subnet's connected route and see no
// difference from a plain network, save that nothing is shared at layer 2
// between hosts (no broadcast or multicast).
//
// The uplink needs no addresses and no ARP: each end routes through a fixed
// next hop (169.254.83.1, onlink) that a permanent neighbour entry resolves
// to the other end's MAC, so no address of the driver's can clash with a
// real network's (the next hop must only not be a local address of the
// host). The host routes the subnet through its end; the sandbox routes the
// remotes through its end.
//
// Either way SetRemotes diffs against what it reads back from the kernel and
// touches only what changed, so flows to remotes that stay are not
// disturbed. Routes the driver adds carry protocol 83 (routeProtocol), and
// in the host netns it removes only routes of that protocol, only inside
// the network's subnet.
//
// # Isolation
//
// Each network is its own sandbox. A plain network's sandbox has IP
// forwarding off and no route beyond its subnet, so a container that sends
// to its gateway for another subnet goes nowhere; traffic between networks
// never meets, even with overlapping subnets. Received VXLAN reaches only the
// device of its VNI.
//
// An encrypted network's sandbox forwards, but only between its bridge and
// its uplink, and has routes only for its subnet and its remotes: a
// container that routes anything else to its gateway gets no further. In the
// host netns, where all encrypted networks meet WireGuard, the <prefix>-wgnet
// table (written in one transaction whenever the set of encrypted networks
// changes, computed from what is read back from the kernel; see
// syncRoutedTable) accepts forwarded packets between the WireGuard interface
// and a network's uplink only when both source and destination are in that
// network's subnet, the uplink fixing which network a packet belongs to;
// every other forwarded packet in or out of WireGuard or an uplink is
// dropped (between two networks, between the underlay and a sandbox), and so
// is every packet from an uplink to the host itself. Between hosts
// WireGuard's cryptokey routing holds: a peer's packets are accepted only
// from the addresses in its AllowedIPs, so no host speaks for another's
// containers. Because encrypted networks share the host's routing table,
// their subnets must not overlap each other's or the host's own addresses
// and routes: EnsureNetwork refuses such a network (ErrInvalidNetwork).
//
// An Internal network is built exactly like any other: the overlay never
// carries egress; containers reach the outside through the node-local
// bridge (overlay/bridge), which the agent leaves out for a container
// attached only to internal networks.
//
// # Encryption
//
// Encrypted networks are routed over WireGuard rather than carried as VXLAN
// inside it because overlay/wg measured it (its doc, "Measured: which
// encrypted data path to ship"): with wireguard-go, containers routed at
// layer 3 over WireGuard run as fast as the tunnel itself, 3.3 times VXLAN
// inside WireGuard at the standard MTU, and keep an MTU of 1420 instead of
// 1370, with no fragmentation. (VXLAN turns a container's TCP super-packets
// into UDP-tunnel GSO packets, which wireguard-go's TUN does not take, so the
// kernel segments them and wireguard-go reads every packet with its own
// syscall.) It is also the data path the kernel module gives where there is
// one. The cost is the lack of layer 2 between hosts and the non-overlapping
// subnets above.
//
// No VXLAN is ever legitimate for an encrypted network's VNI, and with no
// vxlan device for it the kernel drops such packets. SetEncryptedVNIs adds a
// rule on top that drops them explicitly: with an empty interface name every
// UDP packet to the VXLAN port carrying one of those VNIs is dropped,
// whatever interface it arrives on. The VNI is matched in the raw UDP
// payload, so a forged cleartext packet is dropped even though the shared UDP
// socket of a plain network would accept it.
//
// # Restarts
//
// The driver keeps no state: network ids are read from the sandbox file
// names, VNIs from the vxlan devices, encrypted networks from the uplinks in
// the host netns (VNI from the name, network id from the alias), endpoint
// ids from the veth aliases, subnets and MTUs from the bridges, remotes from
// the neighbour and forwarding tables or the routes. A new Driver with the
// same Config continues where the previous process stopped and computes the
// same isolation table, which it then leaves alone; Reconcile removes what is
// no longer wanted (including a vxlan device a crash left in the host netns,
// uplinks of networks no longer encrypted or gone, and routes of the
// driver's on the WireGuard interface outside every encrypted network),
// rebuilds a network whose Encrypted flag changed and repairs the rest,
// after which the caller re-applies remotes and attachments, which are
// no-ops where nothing changed.
//
// A userspace WireGuard interface dies with its process, taking the routes
// on it along; once the caller has reopened it, SetRemotes puts them back.
//
// A sandbox is pinned by a bind mount, which lives as long as the mount
// namespace it was made in. A daemon started in a mount namespace of its own
// (`ip netns exec` makes one) takes its sandboxes down with it when it
// exits: the veths to its containers go too, and Reconcile and Attach
// recreate them. Keep NetNSDir in the host's mount namespace for sandboxes
// to survive a daemon restart.
//
// Contracts:
//   - Host-side and sandbox work goes through netlink and nftables handles
//     bound to namespaces opened by path; the calling goroutine's thread
//     never changes namespace (sysctls are written from a locked thread that
//     is moved back, or discarded).
//   - One Driver at a time per prefix and NetNSDir: a Driver's methods are
//     serialised, two Drivers with the same prefix are not coordinated.
//   - Encrypted networks: the caller creates the WireGuard interface
//     (Config.WireGuardIf) before SetRemotes gives a network remotes, and
//     keeps each peer's AllowedIPs to its WireGuard address plus the /32s
//     of its endpoints on encrypted networks this host also has. The host
//     netns gets IP forwarding on, left on when the last encrypted network
//     goes; an accept in the driver's table does not overrule another
//     table's drop, so a host firewall that drops forwarded packets (a
//     FORWARD policy of drop, as Docker sets) must let this traffic pass.
package vxlan
