#!/usr/bin/env bash
# Installs versitygw, the S3 server the tests run against on 127.0.0.1.
# Idempotent: an installed binary of the pinned version is kept.
set -euo pipefail
VERSION=${VERSITYGW_VERSION:-v1.8.0}
BIN=${GPUWARM_TOOLS:-/opt/gpuwarm/bin}
if [ -x "$BIN/versitygw" ] && [ -f "$BIN/.versitygw-$VERSION" ]; then
  echo "versitygw: $VERSION already at $BIN/versitygw"; exit 0
fi
mkdir -p "$BIN"
echo "versitygw: building $VERSION (about a minute)"
GOBIN="$BIN" GOFLAGS=-buildvcs=false go install "github.com/versity/versitygw/cmd/versitygw@$VERSION"
touch "$BIN/.versitygw-$VERSION"
echo "versitygw: installed at $BIN/versitygw"
