// Package e2e tests the real shoal and shoald binaries on simulated hosts
// (network namespaces on an underlay of their own). It imports nothing of
// Shoal's internals: only its harness, which drives the binaries.
package e2e
