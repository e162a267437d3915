# Airlock. `make help` lists the targets.
GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/airlockhq/airlock/internal/daemon.Version=$(VERSION)
BIN      := bin

.PHONY: help build generate test test-short fuzz bench demo install clean deps

help:
	@echo "make build     build bin/airlockd and bin/airlock (no clang needed)"
	@echo "make generate  recompile bpf/*.c with clang-16 via bpf2go (commit the output)"
	@echo "make test      the whole test suite; privileged tests need root (sudo make test)"
	@echo "make fuzz      run every fuzz target for FUZZTIME each (not in CI: seed corpora run in make test)"
	@echo "make bench     pgbench through direct, Airlock and PgBouncer (tests/bench/report), written to docs/BENCHMARKS.md"
	@echo "make demo      as root on Debian: an intercepted, JIT-credentialed PostgreSQL session"
	@echo "make deps      install the Debian packages the tests and the demo need"

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/airlockd ./cmd/airlockd
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/airlock ./cmd/airlock

generate:
	$(GO) generate ./internal/intercept/

# Packages are tested one at a time (-p 1): the privileged tests create
# namespaces, cgroups and PostgreSQL servers, and two cores are all we have.
test: build
	$(GO) vet ./...
	$(GO) vet -tags perf ./...
	$(GO) test -p 1 -count=1 -timeout 30m ./...

test-short:
	$(GO) test -short -count=1 ./...

FUZZTIME ?= 10s
fuzz:
	./tests/fuzz.sh $(FUZZTIME)

bench: build
	./tests/bench/run.sh

demo: build
	./deploy/demo.sh

deps:
	./tests/deps.sh

install: build
	install -m 0755 $(BIN)/airlockd /usr/local/sbin/airlockd
	install -m 0755 $(BIN)/airlock /usr/local/bin/airlock
	install -m 0644 deploy/systemd/airlockd.service /etc/systemd/system/airlockd.service
	install -d -m 0755 /etc/airlock
	test -f /etc/airlock/airlock.yaml || install -m 0644 deploy/examples/workstation.yaml /etc/airlock/airlock.yaml

clean:
	rm -rf $(BIN)
