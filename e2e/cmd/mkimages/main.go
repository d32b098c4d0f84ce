// Command mkimages builds Shoal's test images with go-containerregistry,
// without Docker:
//
//	DIR/testapp.tar       docker-save archive tagged shoal/testapp:latest:
//	                      a busybox layer plus the test app at
//	                      /usr/local/bin/testapp (the entrypoint)
//	DIR/busybox.oci.tar   OCI image layout tar holding
//	                      docker.io/shoal/busybox:latest: the busybox layer
//	                      alone, Cmd ["sh"]
//	DIR/iperf3.tar        docker-save archive tagged shoal/iperf3:latest:
//	                      the busybox layer plus the host's iperf3 at
//	                      /usr/bin/iperf3 with its ELF interpreter and
//	                      every shared object it loads, Cmd ["iperf3", "-s"]
//
// Usage: go run ./e2e/cmd/mkimages -out DIR (from inside the module).
//
// The busybox layer is Debian's static busybox with one /bin symlink per
// applet. The iperf3 layer copies Debian's iperf3 and its libraries,
// found the way its loader finds them (see runtimeFiles). Timestamps are
// fixed and entries sorted, so a rebuild with the same busybox, iperf3,
// libraries and Go toolchain gives the same digests.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	var o options
	flag.StringVar(&o.out, "out", "", "directory to write the image archives to (created)")
	flag.StringVar(&o.busybox, "busybox", defaultBusybox, "static busybox binary to put in the images")
	flag.StringVar(&o.testapp, "testapp", defaultTestappPkg, "Go package of the test app")
	flag.StringVar(&o.iperf3, "iperf3", defaultIperf3, "iperf3 binary to put, with its libraries, in the iperf3 image")
	flag.Parse()
	if o.out == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: mkimages -out DIR [-busybox PATH] [-testapp PKG] [-iperf3 PATH]")
		os.Exit(2)
	}
	o.log = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := build(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "mkimages: %v\n", err)
		os.Exit(1)
	}
}
