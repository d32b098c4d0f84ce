// Command shoal is Shoal's CLI. It speaks gRPC to the shoald daemon on this
// host (the Control and Local services of package shoalpb) over shoald's
// root-only unix socket. Commands live one group per file; run in root.go
// turns errors into messages and exit codes.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
