// Package wg is the host's WireGuard interface: one per host, carried by the
// kernel module when the kernel has one and by wireguard-go embedded in this
// process otherwise, configured through wgctrl in both cases.
//
// Open creates the interface (Config: name, private key, port, address,
// MTU, and the network namespace it lives in), Device.Kind says which
// implementation carries it ("kernel" or "userspace"; Open logs it too), and
// SetPeers gives it the full set of peers the host should have. The package
// keeps no state of its own: SetPeers reads the device back and applies only
// the difference (ReplacePeers=false; new peers added, changed ones updated
// in place with UpdateOnly and their AllowedIPs replaced, the rest removed),
// so sessions with unchanged peers, and the connections through them, are
// never dropped. Keys are the caller's: GenerateKey makes one, the caller
// persists it. Every peer gets PersistentKeepalive.
//
// Contracts:
//   - Config.Name must be unique on the machine, not only in its netns:
//     wireguard-go's control socket, which wgctrl finds it by, is
//     /var/run/wireguard/<Name>.sock in the mount namespace, and simulated
//     hosts on one machine share that. Give each simulated host's interface
//     a prefixed name (15 bytes at most).
//   - Config.NetNS lets one process serve devices in several namespaces:
//     the TUN device, wireguard-go's UDP sockets and the netlink and
//     genetlink sockets are all created on a thread inside that namespace;
//     no thread is left in it afterwards.
//   - Restart: a userspace device dies with its process (its TUN link
//     vanishes, its control socket file stays). Open removes a stale control
//     socket and any leftover link of its name, and fails with ErrInUse when
//     a live process still answers on the socket. A kernel link of the name
//     is taken over with its peers, so sessions survive a daemon restart;
//     SetPeers then reconciles them.
//   - If the control socket file is deleted while a userspace device runs,
//     wgctrl can no longer reach it: SetPeers fails until it is reopened.
//
// # Measured: which encrypted data path to ship (issue #5, point 5)
//
// BenchmarkThroughput builds two simulated hosts (netns on a bridge, veth
// underlay, MTU 1500) with a userspace device each, each in a process of its
// own as two daemons would be (started with `ip netns exec`; the first set
// used Config.NetNS instead, which an interleaved comparison showed to make
// no difference), "containers" as
// netns behind them, and runs iperf3 TCP for 5 s. Gbit/s, median and range
// of six runs (two sets of three) on this project's 2-core machine (kernel
// 6.18, no WireGuard module), where both hosts, both wireguard-go and both
// iperf3 ends share the two cores, and other engineers' test suites were
// running too (load 2.7 to 7): single runs vary by up to 2x, the order and
// the ratios do not.
//
//	path                                              median  range        PLATFORM.md
//	underlay veth+bridge (reference)                  11.0    9.8-12.8     ~12.8
//	plain VXLAN, MTU 1450 (reference, unencrypted)    11.8    8.7-13.0     ~11.0
//	(a) WireGuard tunnel, host to host                1.27    0.85-1.79    ~1.4
//	(b) containers routed (L3) over WireGuard         1.44    1.07-1.70    ~1.16
//	(c) VXLAN inside WireGuard (wg 1420, vxlan 1370)  0.43    0.29-0.47    ~0.27
//	(c) wg MTU 8920 over the 1500 underlay            1.11    0.82-1.30
//	(c) wg MTU 60000 over the 1500 underlay           2.28    2.10-2.40
//	(c) 9000 jumbo underlay, wg 8920                  1.60    1.48-1.91
//	(b) 9000 jumbo underlay, wg 8920                  2.32    1.93-2.50
//	(b) wg MTU 8920 over the 1500 underlay            0.002   0.001-0.002
//
// With both devices in the test process instead (SHOAL_WG_BENCH_INPROC=1,
// one Go scheduler, less contention for the two cores) every WireGuard
// figure is higher and the order is the same: (a) 2.3, (b) 2.3, (c) 0.54,
// (c) at MTU 8920 1.65, at 60000 3.05, jumbo (c) 2.2, jumbo (b) 3.6.
//
// Why (c) is slow: a container's TCP stream reaches the VXLAN device as 64 KB
// TSO super-packets. For (a) and (b) the TUN accepts those whole (wireguard-go
// asks for TSO with IFF_VNET_HDR) and wireguard-go reads one per syscall,
// then sends the encrypted segments with UDP GSO. VXLAN turns them into
// UDP-tunnel GSO packets, which wireguard-go's TUN does not take, so the
// kernel segments them first and wireguard-go reads every 1420-byte packet
// with its own syscall: four times the cost per byte.
//
// What was tried for (c):
//   - A WireGuard MTU above the underlay's, so the kernel fragments each
//     encrypted datagram: 2.6x at 8920, 5.3x at 60000, the fastest figure here.
//     Not shipped as a default: every datagram becomes up to 41 IP fragments
//     on the wire, one lost fragment loses 60 KB (throughput collapses on a
//     lossy or congested underlay, which a loss-free test bridge cannot
//     show), fragments are dropped by some firewalls and clouds, and
//     reassembly is bounded by ipfrag_high_thresh. The same trick breaks
//     (b), last row: wireguard-go sends TSO segments with UDP GSO, the
//     kernel refuses a GSO segment above the route MTU ("sendmmsg: message
//     too long"), and wireguard-go only falls back to plain sends on EIO.
//   - A jumbo-frame underlay (9000) needs no fragmentation and helps (c)
//     3.7x, (b) 1.6x; where the operator's network has jumbo frames, set the
//     WireGuard MTU to underlay MTU - 80.
//   - TUN offloads: wireguard-go (this version) already uses TSO/USO and
//     GRO on its TUN. Kernel 6.18's TUN also accepts TUN_F_UDP_TUNNEL_GSO
//     (probed here: TUNSETOFFLOAD with 0x080 and 0x100 succeeds), which would
//     hand wireguard-go VXLAN super-packets whole. wireguard-go cannot parse
//     them (they need the larger tunnel virtio header); using it means a
//     tun.Device of our own that splits tunnelled GSO in userspace. Expected
//     to bring (c) near (a); not done.
//
// # Recommendation
//
// Ship (b) for encrypted networks: container traffic routed over the host's
// WireGuard interface, no VXLAN inside it. It is as fast as the tunnel
// itself (3.3x (c) at the standard MTU, and the container MTU stays 1420
// instead of 1370), needs no fragmentation, and is the same data path the
// kernel module would give where there is one. Networks stay isolated by:
//
//   - cryptokey routing: each peer's AllowedIPs are its WireGuard /32 plus
//     the /32s of its tasks on encrypted networks that this host also has
//     (from gossip). A packet from a peer is accepted only with a source in
//     that peer's AllowedIPs, so no host can speak for another host's
//     containers, and nothing is routed to a host for a network it does not
//     carry;
//   - nftables in the host netns, in one table of the overlay's, replaced
//     in one transaction: forwarded packets between wg0 and a network's
//     sandbox uplink are accepted only when both source and destination are
//     in that network's subnet ("iifname wg0 oifname <net-N uplink> ip saddr
//     S ip daddr S accept" and the mirror rule, with the uplink fixing which
//     network a packet belongs to), everything else to or from wg0 is
//     dropped, as is cleartext VXLAN for encrypted networks;
//   - the sandbox keeps each network's containers on their own bridge and
//     answers for remote tasks by proxy ARP, routing them (/32 each) to the
//     host, so containers keep their /24 and see no difference.
//
// What (b) costs: encrypted networks have no shared L2 between hosts (no
// broadcast or multicast), and their subnets must not overlap each other,
// since they share the host's routing table and wg0 (the allocator can
// enforce that for encrypted networks; VXLAN VNIs allowed overlap). Keep (c)
// only if L2 semantics across hosts are required; then offer the
// large-MTU setting as an explicit operator option with the caveats above.
//
// Reproduce with (root, iperf3; `make deps` installs it):
//
//	go test -run '^$' -bench . -benchtime 1x -count 3 ./overlay/wg/
package wg
