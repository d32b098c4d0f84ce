package dns

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"

	mdns "github.com/miekg/dns"
)

// shoalTTL is the TTL of answers to Shoal names. Zero: backends come and go
// with their healthchecks, and the server is a loopback hop away, so a
// cached answer saves nothing worth a stale address.
const shoalTTL = 0

// advertisedUDPSize is the EDNS(0) payload size Shoal's own answers
// announce: the DNS flag day 2020 value, the common resolvers' default.
const advertisedUDPSize = 1232

// handler answers one container's queries. It holds the container's scope
// and the context that Remove cancels.
type handler struct {
	resolver Resolver
	fwd      *forwarder
	log      *slog.Logger
	ctx      context.Context // ends when the container is removed
	scope    atomic.Pointer[Scope]
	forwards chan struct{} // one token per forward in flight
}

func newHandler(ctx context.Context, resolver Resolver, fwd *forwarder, log *slog.Logger, scope Scope) *handler {
	h := &handler{
		resolver: resolver,
		fwd:      fwd,
		log:      log,
		ctx:      ctx,
		forwards: make(chan struct{}, maxForwardsPerContainer),
	}
	h.setScope(scope)
	return h
}

func (h *handler) setScope(s Scope) {
	s.Networks = append([]string(nil), s.Networks...)
	h.scope.Store(&s)
}

// ServeDNS implements mdns.Handler.
func (h *handler) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	_, overTCP := w.RemoteAddr().(*net.TCPAddr)
	resp := h.answer(req, overTCP)
	if overTCP {
		resp.Compress = true
	} else {
		// A UDP answer must fit the client's buffer; a truncated one has
		// TC set, and the client asks again over TCP.
		resp.Truncate(udpSize(req))
	}
	if err := w.WriteMsg(resp); err != nil {
		h.log.Debug("dns: write answer", "name", req.Question[0].Name, "err", err)
	}
}

// answer returns the answer to req: from the resolver for a Shoal name,
// else from the upstreams.
func (h *handler) answer(req *mdns.Msg, overTCP bool) *mdns.Msg {
	if req.Opcode != mdns.OpcodeQuery {
		return reply(req, mdns.RcodeNotImplemented)
	}
	q := req.Question[0] // the server's accept function checked there is one
	if q.Qclass == mdns.ClassINET || q.Qclass == mdns.ClassANY {
		if addrs, ok := h.resolver.Lookup(*h.scope.Load(), q.Name); ok {
			return shoalAnswer(req, addrs)
		}
	}
	select {
	case h.forwards <- struct{}{}:
		defer func() { <-h.forwards }()
	default:
		h.log.Debug("dns: too many forwards in flight", "name", q.Name, "limit", maxForwardsPerContainer)
		return reply(req, mdns.RcodeServerFailure)
	}
	resp, err := h.fwd.forward(h.ctx, req, overTCP)
	if err != nil {
		h.log.Debug("dns: forward failed", "name", q.Name, "type", mdns.TypeToString[q.Qtype], "err", err)
		return reply(req, mdns.RcodeServerFailure)
	}
	return resp
}

// shoalAnswer answers a Shoal name with addrs, shuffled so that clients
// that take the first address spread over the tasks. Only A (and ANY)
// queries get records: overlays are IPv4, and every other type for a name
// that exists is an empty NOERROR.
func shoalAnswer(req *mdns.Msg, addrs []netip.Addr) *mdns.Msg {
	resp := reply(req, mdns.RcodeSuccess)
	resp.Authoritative = true
	q := req.Question[0]
	if q.Qtype != mdns.TypeA && q.Qtype != mdns.TypeANY {
		return resp
	}
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	for _, a := range addrs {
		a = a.Unmap()
		if !a.Is4() {
			continue
		}
		resp.Answer = append(resp.Answer, &mdns.A{
			Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: shoalTTL},
			A:   a.AsSlice(),
		})
	}
	return resp
}

// reply returns an empty answer to req with rcode, carrying an OPT record
// when the query had one (RFC 6891).
func reply(req *mdns.Msg, rcode int) *mdns.Msg {
	resp := new(mdns.Msg)
	resp.SetRcode(req, rcode)
	resp.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(advertisedUDPSize, opt.Do())
	}
	return resp
}

// udpSize is the largest UDP answer the client of req accepts.
func udpSize(req *mdns.Msg) int {
	if opt := req.IsEdns0(); opt != nil && opt.UDPSize() > mdns.MinMsgSize {
		return int(opt.UDPSize())
	}
	return mdns.MinMsgSize
}
