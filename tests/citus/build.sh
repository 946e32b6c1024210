#!/usr/bin/env bash
# Build Citus from the vendored source once and install it into a private copy of Debian's
# PostgreSQL 15 (build/citus/root), so the system's PostgreSQL stays untouched. PostgreSQL
# finds its share and lib folders relative to its own binary, so a copied bin/ next to
# DESTDIR's lib/ and share/ is a complete installation. Prints the bin folder.
# Usage: tests/citus/build.sh [VENDOR_DIR]   (cached: a second run only checks the stamp)
set -euo pipefail
cd "$(dirname "$0")/../.."
vendor="${1:-${INGESTD_CITUS_VENDOR:-../shared/vendor/citus}}"
tarball="$vendor/citus-13.2.2.tar.gz"
patchfile="$vendor/pg15-compat.patch"
work="$PWD/build/citus"
root="$work/root"
pgdir=/usr/lib/postgresql/15
bindir="$root$pgdir/bin"
log="$work/build.log"
mkdir -p "$work"

[ -f "$tarball" ] || { echo "citus: no source at $tarball (set INGESTD_CITUS_VENDOR)" >&2; exit 2; }
recipe=1  # raise when the steps below change: the cache is rebuilt
key="$( (cat "$tarball" "$patchfile"; echo "$recipe") | sha256sum | cut -c1-16)"
# The stamp names the server version too: a PostgreSQL upgrade rebuilds against its headers.
pgver="$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || echo none)"
stamp="$root/.built-$key-$pgver"
if [ -f "$stamp" ] && [ -x "$bindir/postgres" ]; then
    echo "$bindir"; exit 0
fi

# Headers and server must be the same minor version (README of the vendored source: a
# mixed image has a plpgsql.so that does not load), so postgresql-15 is upgraded with them.
need=()
# gssapi and openssl headers: libpq-be.h includes them (not pulled without recommends).
for pkg in postgresql-15 postgresql-server-dev-15 flex bison liblz4-dev libzstd-dev libkrb5-dev \
    libssl-dev make gcc patch; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
srv="$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || true)"
dev="$(dpkg-query -W -f='${Version}' postgresql-server-dev-15 2>/dev/null || true)"
if [ ${#need[@]} -gt 0 ] || [ "$srv" != "$dev" ]; then
    echo "citus: apt-get install ${need[*]} postgresql-15 postgresql-server-dev-15" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        "${need[@]}" postgresql-15 postgresql-server-dev-15 >&2
    pgver="$(dpkg-query -W -f='${Version}' postgresql-15)"
    stamp="$root/.built-$key-$pgver"
fi

echo "citus: building Citus 13.2.2 against PostgreSQL $pgver (log: $log)" >&2
rm -rf "$work/src" "$root"
mkdir -p "$work/src"
tar -xzf "$tarball" -C "$work/src" --strip-components=1
(
    cd "$work/src"
    patch -p1 <"$patchfile"
    # libcurl only serves Citus' anonymous usage statistics, which a test never wants.
    ./configure --without-libcurl PG_CONFIG="$pgdir/bin/pg_config"
    make -j"$(nproc)"
    make install DESTDIR="$root"
) >"$log" 2>&1 || { echo "citus: build failed, see $log" >&2; tail -20 "$log" >&2; exit 1; }

# Complete the private installation: copied binaries (a symlink would resolve back to the
# system folder), the system's libraries and share files beside Citus' own.
mkdir -p "$bindir" "$root$pgdir/lib" "$root/usr/share/postgresql/15"
cp -a "$pgdir/bin/." "$bindir/"
for f in "$pgdir/lib/"*; do
    [ -e "$root$pgdir/lib/$(basename "$f")" ] || ln -s "$f" "$root$pgdir/lib/"
done
cp -an /usr/share/postgresql/15/. "$root/usr/share/postgresql/15/"
rm -rf "$work/src"
touch "$stamp"
echo "$bindir"
