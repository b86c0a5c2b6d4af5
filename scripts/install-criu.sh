#!/usr/bin/env bash
# Installs a CRIU >= 4 that works on recent kernels into a private prefix,
# without touching the system's libraries.
#
# Debian 12's CRIU 3.17 fails on kernel 6.x ("vdso: Unexpected rt vDSO area
# bounds"), and CRIU before 4.2 cannot dump a TCP or UDP socket on kernels
# 6.16 and later (they refuse SO_PASSCRED on inet sockets; criu#2718).
# Debian forky's CRIU 4.2 works but needs glibc >= 2.38, so we download it
# and every library it links against (libc6 included) from forky with a
# private apt configuration, unpack them under $PREFIX/root, and run criu
# through that root's own dynamic loader. $PREFIX/bin/criu is the wrapper.
#
# Idempotent: an existing working install is kept.
set -euo pipefail

PREFIX=${GPUWARM_CRIU_PREFIX:-/opt/gpuwarm/criu}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${CRIU_SUITE:-forky}

if [ -x "$PREFIX/bin/criu" ] && "$PREFIX/bin/criu" --version 2>/dev/null | grep -Eq 'Version: (4\.([2-9]|[1-9][0-9])|[5-9])'; then
  echo "criu: $("$PREFIX/bin/criu" --version | head -1) already at $PREFIX/bin/criu"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" >"$work/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Dir::State::status=/dev/null"
  -o "APT::Architecture=amd64" -o "APT::Architectures=amd64"
)
echo "criu: fetching the $SUITE package index"
apt-get "${apt_opts[@]}" -qq update 2>&1 | grep -v unsandboxed || true

# criu and the shared libraries it needs, recursively (no python, no tools).
pkgs=$(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
  --no-conflicts --no-breaks --no-replaces --no-enhances --no-pre-depends criu 2>/dev/null |
  grep -v '^ ' | grep -E '^(criu$|lib)' | grep -v '<' | sort -u)
echo "criu: downloading $(echo $pkgs | wc -w) packages"
(cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download $pkgs 2>&1 | grep -v unsandboxed || true)

rm -rf "$PREFIX.new"
mkdir -p "$PREFIX.new/root" "$PREFIX.new/bin"
for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$PREFIX.new/root"; done

root="$PREFIX/root"
libpath="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
cat >"$PREFIX.new/bin/criu" <<WRAP
#!/bin/sh
# gpuwarm: CRIU from Debian $SUITE run through its own glibc (see scripts/install-criu.sh).
exec "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$libpath" "$root/usr/sbin/criu" "\$@"
WRAP
chmod +x "$PREFIX.new/bin/criu"
rm -rf "$PREFIX"
mv "$PREFIX.new" "$PREFIX"
"$PREFIX/bin/criu" --version
echo "criu: installed at $PREFIX/bin/criu"
