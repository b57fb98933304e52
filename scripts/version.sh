#!/usr/bin/env bash
# Prints what a build of this checkout is stamped with:
#
#   scripts/version.sh version   1.2.0, 1.2.0-3-g0123456789ab, or 0.0.0-dev+0123456789ab
#   scripts/version.sh commit    the full commit hash, "-dirty" when the tree has changes
#   scripts/version.sh epoch     the commit time in Unix seconds (archive timestamps)
#   scripts/version.sh ldflags   the -X flags that stamp main.Version and main.Commit
#
# The version is `git describe` of the newest v* tag, without the "v"; with
# no tag it is 0.0.0-dev+COMMIT (a shallow clone has no tags either). A tree
# with uncommitted changes to tracked files gets "+dirty" (".dirty" when the
# version already has build metadata), so such a build never passes for a
# release. Outside a git checkout (a source archive) set CT_SUPERVISE_VERSION,
# CT_SUPERVISE_COMMIT and SOURCE_DATE_EPOCH; without them the build is
# 0.0.0-dev of commit "unknown", with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."

# in_git: this directory is the top of a git checkout, not a source archive
# unpacked somewhere inside another repository.
in_git() { [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$(pwd -P)" ]; }

dirty() {
  # Untracked files are ignored: they are not part of the build unless
  # someone adds them, and dist/ itself is one.
  [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]
}

commit() {
  if [ -n "${CT_SUPERVISE_COMMIT:-}" ]; then echo "$CT_SUPERVISE_COMMIT"; return; fi
  if ! in_git; then
    echo "version.sh: not a git checkout and CT_SUPERVISE_COMMIT is not set: commit unknown" >&2
    echo unknown
    return
  fi
  local c
  c=$(git rev-parse HEAD)
  if dirty; then c="$c-dirty"; fi
  echo "$c"
}

version() {
  if [ -n "${CT_SUPERVISE_VERSION:-}" ]; then echo "${CT_SUPERVISE_VERSION#v}"; return; fi
  if ! in_git; then
    echo "version.sh: not a git checkout and CT_SUPERVISE_VERSION is not set: version 0.0.0-dev" >&2
    echo 0.0.0-dev
    return
  fi
  local v
  if v=$(git describe --tags --match 'v[0-9]*' --abbrev=12 2>/dev/null); then
    v=${v#v}
  else
    v="0.0.0-dev+$(git rev-parse --short=12 HEAD)"
  fi
  if dirty; then
    case "$v" in
      *+*) v="$v.dirty" ;;
      *) v="$v+dirty" ;;
    esac
  fi
  echo "$v"
}

epoch() {
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then echo "$SOURCE_DATE_EPOCH"; return; fi
  if ! in_git; then
    echo "version.sh: not a git checkout and SOURCE_DATE_EPOCH is not set: epoch 0" >&2
    echo 0
    return
  fi
  git log -1 --format=%ct
}

case "${1:-}" in
  version) version ;;
  commit) commit ;;
  epoch) epoch ;;
  ldflags) echo "-X main.Version=$(version) -X main.Commit=$(commit)" ;;
  *)
    echo "usage: scripts/version.sh version|commit|epoch|ldflags" >&2
    exit 64
    ;;
esac
