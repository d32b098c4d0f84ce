package vxlan

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

// forgedVXLAN builds the UDP payload of a VXLAN packet (RFC 7348): the 8-byte
// VXLAN header with the VNI, then an Ethernet frame carrying an IPv4/UDP
// datagram from src to dst with payload.
func forgedVXLAN(vni uint32, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, 0, 8+14+20+8+len(payload))
	// Flags: I (VNI valid); VNI in bytes 4-6; reserved bytes zero.
	b = append(b, 0x08, 0, 0, 0, byte(vni>>16), byte(vni>>8), byte(vni), 0)
	b = append(b, dstMAC...)
	b = append(b, srcMAC...)
	b = append(b, 0x08, 0x00) // IPv4
	ip := make([]byte, 20)
	ip[0] = 0x45 // version 4, 5-word header
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64 // TTL
	ip[9] = 17 // UDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	b = append(b, ip...)
	udp := make([]byte, 8) // checksum 0: none, allowed over IPv4
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	b = append(b, udp...)
	return append(b, payload...)
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func TestEncryptedVNIDrop(t *testing.T) {
	w := newWorld(t, 2)
	h1, h2 := w.hosts[0], w.hosts[1]
	ctx := context.Background()
	n := network("n1", 4100, "10.10.1.0/24")
	other := network("n2", 4101, "10.10.2.0/24")
	h1.ensure(t, n)
	h1.ensure(t, other)
	a := w.container(t, "a")
	epA := endpoint("ep-a", "10.10.1.2")
	h1.attach(t, n.ID, epA, a)
	target := ap(epA.Addr, 9000)
	pc := listenUDP(t, a, target)

	// The attacker: a plain UDP socket in host 2's netns, sending to host
	// 1's VTEP a packet its VXLAN socket accepts as VNI n.VNI.
	var forger net.Conn
	err := netnsutil.InNetNS(h2.ns, func() error {
		var err error
		forger, err = net.Dial("udp", netip.AddrPortFrom(h1.vtep, DefaultPort).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	forged := netip.MustParseAddrPort("10.10.1.66:4444")
	forgedMAC := net.HardwareAddr{0x02, 0xee, 0, 0, 0, 0x66}
	// delivered sends forged packets until one reaches a or wait passes.
	delivered := func(wait time.Duration) bool {
		payload := []byte("forged " + t.Name())
		pkt := forgedVXLAN(n.VNI, forgedMAC, epA.MAC, forged, target, payload)
		buf := make([]byte, 256)
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) {
			if _, err := forger.Write(pkt); err != nil {
				t.Fatal(err)
			}
			pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			nr, from, err := pc.ReadFrom(buf)
			if err == nil && string(buf[:nr]) == string(payload) && from.String() == forged.String() {
				return true
			}
		}
		return false
	}

	steps := []struct {
		name      string
		vnis      []uint32
		wg        string
		delivered bool
	}{
		{"not encrypted", nil, "", true},
		{"encrypted", []uint32{other.VNI, n.VNI}, "wgtest0", false},
		{"only another VNI encrypted", []uint32{other.VNI}, "wgtest0", true},
		{"encrypted, fail closed without a WireGuard interface", []uint32{n.VNI}, "", false},
		// Stands in for traffic that WireGuard decrypted: what arrives on
		// the named interface passes.
		{"encrypted, arriving on the exempt interface", []uint32{n.VNI}, h1.uplink, true},
		{"table removed", nil, "", true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := h1.d.SetEncryptedVNIs(ctx, st.vnis, st.wg); err != nil {
				t.Fatal(err)
			}
			wait := ioTimeout
			if !st.delivered {
				wait = closedTimeout
			}
			if got := delivered(wait); got != st.delivered {
				t.Errorf("forged packet delivered = %v, want %v", got, st.delivered)
			}
		})
	}

	// Removing the table leaves nothing behind, and removing it again is fine.
	if err := h1.d.SetEncryptedVNIs(ctx, nil, ""); err != nil {
		t.Fatal(err)
	}
	c := nftablesIn(t, h1.ns)
	if _, err := c.ListTableOfFamily(h1.d.TableName(), nftables.TableFamilyINet); err == nil {
		t.Error("table still there after SetEncryptedVNIs(nil)")
	}

	if err := h1.d.SetEncryptedVNIs(ctx, []uint32{1 << 24}, ""); !errors.Is(err, ErrInvalidNetwork) {
		t.Errorf("SetEncryptedVNIs with VNI 2^24 = %v, want ErrInvalidNetwork", err)
	}
}

// nftablesIn returns an nftables connection to the netns at path.
func nftablesIn(t testing.TB, path string) *nftables.Conn {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
