# Shoal build, test and demo entry points. Every target works on a fresh
# Debian machine as root: `make deps` installs what the project needs.

GO        ?= go
BIN       := bin
IMAGES    := $(BIN)/images
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
GOBIN_DIR := $(CURDIR)/$(BIN)/tools

# Debian packages the daemon, the tests and the benchmarks use. `deps`
# installs only the missing ones, so it is cheap to call from every target.
DEB_PKGS := runc nftables iproute2 busybox-static protobuf-compiler libprotobuf-dev \
            docker-registry iperf3 wrk curl ca-certificates etcd-server etcd-client tcpdump

.PHONY: all deps build proto proto-check images test unit e2e demo demo-stop lint bench clean

all: build

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	else echo "deps: all Debian packages present"; fi
	@# docker-registry's package starts a system service on :5000; the tests run
	@# their own registry on their own address, so keep the system one stopped.
	@if [ -x /etc/init.d/docker-registry ]; then /etc/init.d/docker-registry stop >/dev/null 2>&1 || true; fi

build:
	$(GO) build -o $(BIN)/ ./cmd/shoal ./cmd/shoald

$(GOBIN_DIR)/protoc-gen-go:
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(GOBIN_DIR)/protoc-gen-go-grpc:
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

# Regenerates proto/*.pb.go. protoc comes from Debian (pinned by the release),
# the Go plugins are pinned above, so the output is reproducible.
proto: $(GOBIN_DIR)/protoc-gen-go $(GOBIN_DIR)/protoc-gen-go-grpc
	PATH=$(GOBIN_DIR):$$PATH protoc -I proto -I /usr/include \
	  --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	  proto/*.proto

# Fails when the committed proto/*.pb.go differ from what `make proto`
# would generate (run in `make test`, so CI catches a stale or hand-edited
# generated file).
proto-check: $(GOBIN_DIR)/protoc-gen-go $(GOBIN_DIR)/protoc-gen-go-grpc
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	PATH=$(GOBIN_DIR):$$PATH protoc -I proto -I /usr/include \
	  --go_out=$$tmp --go_opt=paths=source_relative \
	  --go-grpc_out=$$tmp --go-grpc_opt=paths=source_relative proto/*.proto || exit 1; \
	for f in $$tmp/*.pb.go; do \
	  cmp -s $$f proto/$$(basename $$f) || { echo "proto/$$(basename $$f) is stale: run make proto"; exit 1; }; \
	done; echo "proto: generated code is up to date"

# Test images as OCI archives, built with go-containerregistry (no Docker).
images:
	$(GO) run ./e2e/cmd/mkimages -out $(IMAGES)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test ./...

e2e: deps build images
	$(GO) test -count=1 -timeout 20m -v ./e2e/...

# The README's test command: installs what is missing, then runs lint, unit,
# root integration and end-to-end tests.
test: deps lint proto-check build images
	SHOAL_BIN=$(CURDIR)/$(BIN) SHOAL_IMAGES=$(CURDIR)/$(IMAGES) \
	  $(GO) test -count=1 -timeout 25m ./...

demo: deps build images
	./e2e/demo/demo.sh

demo-stop:
	./e2e/demo/demo.sh stop

# Benchmarks, printed as Go's benchmark table: end-to-end convergence on a
# simulated host beside bare runc, writes beside etcd, the pure scheduler,
# then the overlay data plane. The e2e overlay benchmark has a line of its
# own, so the first line names the other e2e benchmarks.
bench: deps build images
	@echo "== end to end: s/create-20 vs s/run-20 (one simulated host), writes vs etcd (three)"
	SHOAL_BIN=$(CURDIR)/$(BIN) SHOAL_IMAGES=$(CURDIR)/$(IMAGES) \
	  $(GO) test -run '^$$' -bench '^Benchmark(ServiceCreate20|RuncRun20|ShoalWrites|EtcdWrites)$$' -benchtime 1x -count 3 ./e2e/
	@echo "== scheduler"
	$(GO) test -run '^$$' -bench . -benchmem ./scheduler/
	@echo "== overlay: container to container over VXLAN vs the underlay, two simulated hosts"
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 3 ./overlay/vxlan/
	@echo "== overlay in Shoal's containers (iperf3, two simulated hosts): plain vs underlay, encrypted vs a bare WireGuard tunnel"
	SHOAL_BIN=$(CURDIR)/$(BIN) SHOAL_IMAGES=$(CURDIR)/$(IMAGES) \
	  $(GO) test -run '^$$' -bench OverlayIperf3 -benchtime 1x -count 3 ./e2e/
	@echo "== WireGuard (iperf3): raw tunnel, containers routed over it, VXLAN inside it"
	$(GO) test -run '^$$' -bench Throughput -benchtime 1x -count 3 ./overlay/wg/
	@echo "== WireGuard: first connection after two hosts add each other as peers"
	$(GO) test -run '^$$' -bench FirstConnection -benchtime 12x ./overlay/wg/

clean:
	rm -rf $(BIN)
