// Package healthcheck will run in-container probes and keep each task's
// starting/healthy/unhealthy state machine (DESIGN.md, "Task lifecycle").
// It is part of the fixed layout; the agent uses it once services carry
// health checks. It imports nothing of Shoal.
package healthcheck
