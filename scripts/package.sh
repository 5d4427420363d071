#!/usr/bin/env bash
# Makes Herald's artifacts from the one release build (scripts/build.sh), in target/dist:
#   herald-<version>-x86_64-linux-musl     the static binary (console inside)
#   herald_<version>_amd64.deb             the Debian package (binary, systemd unit, conffile)
# and, with --image, the container image herald:<version> (Podman, deploy/Containerfile).
# Nothing is built twice: the binary is the one every test runs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
IMAGE=0
[ "${1:-}" = "--image" ] && IMAGE=1
[ -x "$HERALD_BIN" ] || build_release
VERSION="$("$HERALD_BIN" --version | awk '{print $2}')"
DIST="$ROOT/target/dist"
mkdir -p "$DIST"
cp "$HERALD_BIN" "$DIST/herald-$VERSION-x86_64-linux-musl"

# The Debian package, assembled and built with dpkg-deb (no extra tool to install).
PKG="$ROOT/target/deb/herald"
rm -rf "$PKG" && mkdir -p "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/etc/herald" "$PKG/usr/share/doc/herald"
install -m 0755 "$HERALD_BIN" "$PKG/usr/bin/herald"
install -m 0644 deploy/debian/herald.service "$PKG/lib/systemd/system/herald.service"
"$HERALD_BIN" config template >"$PKG/etc/herald/herald.toml"
chmod 0640 "$PKG/etc/herald/herald.toml"
install -m 0644 docs/operations.md "$PKG/usr/share/doc/herald/operations.md"
printf 'Herald %s\nLicense: Apache-2.0\n' "$VERSION" >"$PKG/usr/share/doc/herald/copyright"
install -m 0755 deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm "$PKG/DEBIAN/"
echo /etc/herald/herald.toml >"$PKG/DEBIAN/conffiles"
cat >"$PKG/DEBIAN/control" <<CONTROL
Package: herald
Version: $VERSION
Architecture: amd64
Maintainer: Herald maintainers <herald@localhost>
Section: net
Priority: optional
Installed-Size: $(du -sk "$PKG" | cut -f1)
Homepage: https://github.com/herald-notify/herald
Description: self-hosted notification service (email and signed webhooks)
 Herald accepts notifications over an HTTP API, renders templates, stores everything
 in PostgreSQL and delivers email over SMTP and signed webhooks, with retries, an
 admin console behind OpenID Connect login, and an audit log. One static binary.
CONTROL
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DIST/herald_${VERSION}_amd64.deb" >/dev/null
log "built $DIST/herald_${VERSION}_amd64.deb"

if [ $IMAGE = 1 ]; then
  CTX="$ROOT/target/image"
  rm -rf "$CTX" && mkdir -p "$CTX"
  cp "$HERALD_BIN" "$CTX/herald"
  printf 'root:x:0:0:root:/:/sbin/nologin\nherald:x:65532:65532:herald:/:/sbin/nologin\n' >"$CTX/passwd"
  printf 'root:x:0:\nherald:x:65532:\n' >"$CTX/group"
  podman_cmd build --quiet --format docker -f deploy/Containerfile -t "herald:$VERSION" -t herald:latest "$CTX" >/dev/null
  log "built image herald:$VERSION ($(podman_cmd image inspect --format '{{.Size}}' "herald:$VERSION") bytes)"
fi
