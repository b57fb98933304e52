# ct-supervise — build, test, demo and benchmarks.
#
# `make test` and `make demo` build what they need themselves: the real
# consul (v1.21.0) and consul-template (v0.41.1) binaries are built once into
# a cache outside the repository (see scripts/tools.sh) and put on PATH.

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
GO           ?= go
BIN          := bin/ct-supervise
FUZZTIME     ?= 100000x
TEST_TIMEOUT ?= 25m

# The directory holding consul and consul-template, built on first use.
TOOLS = $$(./scripts/tools.sh)

.PHONY: all build dist tools fmt-check vet test unit integration fuzz demo bench clean

all: build

# Static (no cgo): nothing to resolve at start-up, which matters for a
# plugin consul-template forks several times per render. Stamped with the
# version and commit that `ct-supervise version` prints (scripts/version.sh).
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$$(./scripts/version.sh ldflags)" -o $(BIN) .

# Release binaries and archives for linux and darwin, amd64 and arm64, with
# SHA256SUMS, reproducibly, into dist/ (scripts/dist.sh says how).
dist:
	./scripts/dist.sh

tools:
	@./scripts/tools.sh

fmt-check:
	@out=$$(gofmt -l . | grep -v '^vendor/' || true); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# Every test, integration included, with the race detector, then a short
# fuzz run. Under CI=true no integration test may skip.
test: fmt-check vet build
	@bin=$(TOOLS); echo "using consul and consul-template from $$bin"; \
	PATH="$$bin:$$PATH" $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz

unit:
	$(GO) test -race -count=1 -short ./plugin/ ./state/ .

integration: build
	@bin=$(TOOLS); PATH="$$bin:$$PATH" $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./integration/

# Each fuzz target gets FUZZTIME on its own (scripts/fuzz.sh): by default a
# number of inputs (a few seconds each), which keeps `make test` clear of
# Go's fuzztime deadline race; FUZZTIME=1m for a timed run. Their seed
# corpora (testdata/fuzz) also run as plain tests in `make test`.
FUZZ_TARGETS := plugin:FuzzParseJSON plugin:FuzzParseArgs plugin:FuzzDeclarationFlags state:FuzzDecodeState

fuzz:
	@GO=$(GO) ./scripts/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

# A local Consul dev agent and five consul-template nodes rolling a reload.
# (Built, not `go run`: go run reports its own status instead of the demo's.)
demo: build
	@$(GO) build -o bin/demo ./internal/demo
	@bin=$(TOOLS); PATH="$$bin:$$PATH" bin/demo -ct-supervise $(BIN) $(DEMO_FLAGS)

# ct-supervise against `consul lock` on one dev agent; BENCH_FLAGS=-quick for a short run.
bench: build
	@$(GO) build -o bin/bench ./internal/bench
	@bin=$(TOOLS); PATH="$$bin:$$PATH" bin/bench -ct-supervise $(BIN) $(BENCH_FLAGS)

clean:
	rm -rf bin dist
