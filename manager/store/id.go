package store

import (
	"crypto/rand"
	"math/big"
)

// idLen is the length of ids: 25 base36 digits hold 128 random bits
// (36^25 > 2^128), like Swarm's ids.
const idLen = 25

// NewID returns a random 25-character lowercase base36 id.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	s := new(big.Int).SetBytes(b[:]).Text(36)
	for len(s) < idLen {
		s = "0" + s
	}
	return s
}
