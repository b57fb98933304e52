#!/usr/bin/env bash
# Builds (once) the real Consul and consul-template binaries that the
# integration tests, the demo and the benchmarks run against, into a cache
# outside the repository keyed by version. Prints the bin directory to add to
# PATH. Safe to run concurrently and repeatedly: the second run is instant.
set -euo pipefail

CONSUL_VERSION="${CONSUL_VERSION:-1.21.0}"
CT_VERSION="${CONSUL_TEMPLATE_VERSION:-0.41.1}"
CACHE="${CT_SUPERVISE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ct-supervise/tools}"
BIN="$CACHE/bin-consul${CONSUL_VERSION}-ct${CT_VERSION}"
mkdir -p "$BIN"

log() { echo "tools: $*" >&2; }

build_consul() {
  local out="$BIN/consul"
  [ -x "$out" ] && return 0
  log "building consul v${CONSUL_VERSION} from the Go module proxy (about 4 minutes, once)"
  local dir
  dir=$(GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/consul@v${CONSUL_VERSION}" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || { log "could not download github.com/hashicorp/consul@v${CONSUL_VERSION}"; return 1; }
  local work="$CACHE/src-consul-${CONSUL_VERSION}.$$"
  rm -rf "$work"
  cp -r "$dir" "$work"
  chmod -R u+w "$work"
  (
    cd "$work"
    # The published module replaces its submodules with local paths that the
    # proxy copy lacks; take them from the proxy instead.
    for r in $(go mod edit -json | sed -n 's/.*"Path": "\(github.com\/hashicorp\/consul\/[^"]*\)".*/\1/p' | sort -u); do
      go mod edit -dropreplace="$r"
    done
    GOFLAGS=-mod=mod go build -o "$out.tmp.$$" .
  )
  mv "$out.tmp.$$" "$out"
  rm -rf "$work"
}

build_consul_template() {
  local out="$BIN/consul-template"
  [ -x "$out" ] && return 0
  log "installing consul-template v${CT_VERSION}"
  local gobin="$CACHE/gobin-ct-${CT_VERSION}.$$"
  GOBIN="$gobin" GOFLAGS=-mod=mod go install "github.com/hashicorp/consul-template@v${CT_VERSION}"
  mv "$gobin/consul-template" "$out"
  rm -rf "$gobin"
}

build_consul
build_consul_template
echo "$BIN"
