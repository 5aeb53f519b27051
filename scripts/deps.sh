#!/bin/sh
# Installs the Debian 12 packages cyan needs to build, run and test, when missing.
# Usage: scripts/deps.sh [build|run|test|bench]   (each level includes the previous;
# run adds what the README's walkthrough uses: curl and paho-mqtt for examples/python)
set -eu
level=${1:-build}
pkgs="build-essential cmake pkg-config libuv1-dev libsqlite3-dev libssl-dev sqlite3 libmicrohttpd-dev libgnutls28-dev libjansson-dev libcurl4-openssl-dev libwslay-dev"
case "$level" in
  run|test|bench) pkgs="$pkgs curl python3-paho-mqtt" ;;
esac
case "$level" in
  test|bench) pkgs="$pkgs libcmocka-dev python3-pytest python3-paho-mqtt mosquitto-clients clang valgrind curl strace prometheus libcoap3-bin chromium openssl libmosquitto-dev" ;;
esac
case "$level" in
  bench) pkgs="$pkgs mosquitto util-linux" ;;
esac
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node.js and npm for the npm coap device (tests/integration/node): Debian's,
# unless an npm is there already (nodesource's nodejs bundles npm and conflicts
# with Debian's npm package, so the command decides, not dpkg).
case "$level" in
  test|bench) command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm" ;;
esac
[ -z "$missing" ] && exit 0
echo "cyan: installing Debian packages:$missing" >&2
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
