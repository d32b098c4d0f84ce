package ca

import (
	"crypto/tls"
	"crypto/x509"
	"sync"
	"time"
)

// KeyPair holds a node's current certificate so that renewal takes effect
// on new connections without rebuilding listeners or dialers: a tls.Config
// made by ServerTLSConfig or ClientTLSConfig and passed through ApplyTo
// asks the KeyPair for the certificate at every handshake. Existing
// connections keep the certificate they were made with. Safe for
// concurrent use.
type KeyPair struct {
	mu   sync.Mutex // guards following
	cert *tls.Certificate
}

// NewKeyPair returns a holder starting with c.
func NewKeyPair(c tls.Certificate) *KeyPair {
	return &KeyPair{cert: &c}
}

// Set replaces the certificate used by later handshakes (after renewal, or
// a role change).
func (k *KeyPair) Set(c tls.Certificate) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cert = &c
}

// Get returns the current certificate.
func (k *KeyPair) Get() tls.Certificate {
	k.mu.Lock()
	defer k.mu.Unlock()
	return *k.cert
}

// current is Get as a pointer for the tls callbacks; the pointed-to value is
// never modified after Set stores it.
func (k *KeyPair) current() *tls.Certificate {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cert
}

// ApplyTo makes cfg take its own certificate from k at every handshake, as
// a server and as a client, and returns cfg. Any fixed Certificates in cfg
// are dropped so they cannot shadow a renewed certificate.
func (k *KeyPair) ApplyTo(cfg *tls.Config) *tls.Config {
	cfg.Certificates = nil
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return k.current(), nil
	}
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return k.current(), nil
	}
	return cfg
}

// RenewalTime is when a node should ask for a new certificate: two thirds
// into its validity, leaving a third (30 days for DefaultNodeCertValidity)
// to get through manager outages before it expires.
func RenewalTime(cert *x509.Certificate) time.Time {
	lifetime := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotBefore.Add(lifetime * 2 / 3)
}
