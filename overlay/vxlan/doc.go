// Package vxlan is the per-host data plane of Shoal's overlay networks: a
// Driver turns "this host has network N, these endpoints, and these remote
// endpoints on other hosts" into Linux bridges, vxlan devices, veth pairs,
// static neighbour and forwarding entries, and an nftables table. The agent
// calls it; the manager's allocations (VNI, subnet, addresses, MACs) and the
// knowledge of which endpoint runs on which host come from above.
//
// # Layout
//
// Everything carries the driver's Config.Prefix (see names.go for the exact
// names), so several simulated hosts on one machine never clash and a
// restarted driver recognises what it made:
//
//	host netns (Config.HostNetNS, the underlay)
//	  UDP socket *:4789 of every vxlan device (the kernel's, shared by VNIs)
//	  nftables table inet <prefix>-vxlan (SetEncryptedVNIs)
//	sandbox netns per network, pinned at <NetNSDir>/<prefix>-ov-<network id>
//	  <prefix>br          bridge: gateway address, MAC 02:53:<gateway>, MTU
//	  <prefix>x<VNI hex>  vxlan: VNI, local VTEP, port, nolearning, proxy;
//	                      a bridge port; neighbour + FDB entries per remote
//	  <prefix>v<hash>     sandbox end of a veth per endpoint (alias = id)
//	container netns (the caller's)
//	  <ifName>            container end: endpoint address and MAC, MTU,
//	                      only the subnet's connected route
//
// The vxlan device is created in the host netns and then moved into the
// sandbox. A vxlan device keeps the UDP socket, and so the routing and
// addresses, of the namespace it was created in: encapsulated packets leave
// and arrive on the host's underlay while the device itself is a port of a
// bridge no other network can reach. Docker's overlay driver does the same.
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
// Network.MTU lowers it for paths with more overhead: EncryptedMTU for VXLAN
// inside WireGuard.
//
// # Remote endpoints and ARP
//
// Nothing is learned or flooded. The vxlan device has learning off and no
// default forwarding entry; SetRemotes programs, for each remote endpoint, a
// permanent neighbour entry (address → MAC) and a forwarding entry
// (MAC → VTEP) on it. With the proxy flag the vxlan device answers the
// containers' ARP requests itself from the neighbour entries and never sends
// ARP over the wire; an address with no entry gets no answer. SetRemotes
// diffs against the entries read back from the kernel and touches only what
// changed, so flows to remotes that stay are not disturbed.
//
// # Isolation
//
// Each network is its own sandbox. A sandbox has IP forwarding off and no
// route beyond its subnet, so a container that sends to its gateway for
// another subnet goes nowhere; traffic between networks never meets, even
// with overlapping subnets. Received VXLAN reaches only the device of its
// VNI. An Internal network is built exactly like any other: the overlay
// never carries egress; containers reach the outside through the node-local
// bridge (overlay/bridge), which the agent leaves out for a container
// attached only to internal networks.
//
// # Encryption
//
// An encrypted network is ensured with Network.VTEP set to the host's
// WireGuard address and its remotes' VTEPs set to theirs, so its VXLAN
// travels inside the tunnel (and Network.MTU lowered accordingly).
// SetEncryptedVNIs makes the host drop VXLAN for those VNIs that did not
// arrive through the WireGuard interface: the VNI is matched in the raw UDP
// payload, so a forged cleartext packet for an encrypted network is dropped
// even though the shared UDP socket would accept it.
//
// # Restarts
//
// The driver keeps no state: network ids are read from the sandbox file
// names, VNIs from the vxlan devices, endpoint ids from the veth aliases,
// subnets and MTUs from the bridges, remotes from the neighbour and
// forwarding tables. A new Driver with the same Config continues where the
// previous process stopped; Reconcile removes what is no longer wanted
// (including a vxlan device a crash left in the host netns) and repairs the
// rest, after which the caller re-applies remotes and attachments, which are
// no-ops where nothing changed.
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
package vxlan
