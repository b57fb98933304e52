#!/usr/bin/env bash
# Builds the release: for each platform a static binary
# dist/ct-supervise_VERSION_OS_ARCH, an archive of it
# dist/ct-supervise_VERSION_OS_ARCH.tar.gz holding `ct-supervise`, and
# dist/SHA256SUMS over all of them (`sha256sum -c SHA256SUMS` checks it).
#
#   DIST_PLATFORMS   "os/arch ..." (default: linux and darwin, amd64 and arm64)
#   DIST_DIR         output directory (default: dist)
#   CT_SUPERVISE_VERSION, CT_SUPERVISE_COMMIT, SOURCE_DATE_EPOCH
#                    for a build outside git: see scripts/version.sh
#
# Reproducible: the same commit built with the same Go release gives the
# same bytes, wherever the checkout is and whenever it is built.
#   -trimpath         no checkout or module-cache paths in the binary.
#   -buildvcs=false   the go command would otherwise embed vcs.* settings
#                     read from git (vcs.modified, vcs.time): a second,
#                     unchecked account of the commit, absent in a build from
#                     a source archive, and an error where git refuses a
#                     checkout owned by another user. The commit is stamped
#                     once, explicitly, with -X main.Commit instead.
#   GOFLAGS=, GOAMD64=v1, GOARM64=v8.0: the caller's environment must not
#                     change what is built (a -race in GOFLAGS, a newer
#                     instruction set than releases promise).
#   -s -w             no symbol table or DWARF: smaller downloads; Go's stack
#                     traces do not need them.
#   archives          entries sorted, owner 0:0, mode 0755, every timestamp
#                     the commit time, gzip without name or time (-n).
# Nothing is half-written: everything is built in a temporary directory
# inside DIST_DIR and moved into place only once SHA256SUMS is written.
set -euo pipefail
cd "$(dirname "$0")/.."

PLATFORMS="${DIST_PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}"
OUT="${DIST_DIR:-dist}"

log() { echo "dist: $*" >&2; }
die() { log "$*"; exit 1; }

tar --version 2>/dev/null | grep -q 'GNU tar' ||
  die "GNU tar is required for reproducible archives (on macOS: brew install gnu-tar and put gtar first on PATH as tar)"

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$@"; else shasum -a 256 "$@"; fi
}

VERSION=$(scripts/version.sh version)
COMMIT=$(scripts/version.sh commit)
EPOCH=$(scripts/version.sh epoch)
LDFLAGS="-s -w -X main.Version=$VERSION -X main.Commit=$COMMIT"
log "ct-supervise $VERSION (commit $COMMIT), $(go env GOVERSION), into $OUT/"
case "$COMMIT" in
  *-dirty) log "warning: the tree has uncommitted changes: this build is marked dirty and is no release" ;;
  unknown) log "warning: the commit is unknown: this build cannot be traced to its source" ;;
esac

mkdir -p "$OUT"
work=$(mktemp -d "$OUT/.dist.XXXXXX")
trap 'rm -rf "$work"' EXIT

for platform in $PLATFORMS; do
  os=${platform%/*}
  arch=${platform#*/}
  name="ct-supervise_${VERSION}_${os}_${arch}"
  log "building $name"
  GOFLAGS= GOAMD64=v1 GOARM64=v8.0 CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" \
    go build -trimpath -buildvcs=false -ldflags "$LDFLAGS" -o "$work/$name" .
  mkdir "$work/$name.d"
  cp "$work/$name" "$work/$name.d/ct-supervise"
  tar --create --format=ustar --sort=name \
      --owner=0 --group=0 --numeric-owner --mode='u=rwx,go=rx' \
      --mtime="@$EPOCH" -C "$work/$name.d" ct-supervise |
    gzip -9 -n >"$work/$name.tar.gz"
  rm -r "$work/$name.d"
done

(cd "$work" && LC_ALL=C sha256 ct-supervise_* >SHA256SUMS)

# Replace the previous release of the same version, and only that.
for f in "$work"/ct-supervise_* "$work"/SHA256SUMS; do
  mv -f "$f" "$OUT/"
done
log "wrote $OUT/SHA256SUMS:"
cat "$OUT/SHA256SUMS" >&2
