#!/usr/bin/env bash
# Makes sure the programs the test suite runs are installed, from Debian's
# packages when they are missing: PostgreSQL and Redis (the suite starts its own
# private instances of them, tests/services.py; the machine's own are neither
# used nor started), coturn, chromium and npm (for the official socket.io-client).
# Fails (never skips) when one cannot be had: CI must not pass without them.
set -euo pipefail

need_apt=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v turnserver >/dev/null 2>&1 || need_apt+=(coturn)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "make test: the tests need ${need_apt[*]}, which are not installed, and only root" \
      "can install them on Debian or Ubuntu. Run \`sudo apt-get install ${need_apt[*]}\`" \
      "once (or run \`make test\` as root, which does it), then \`make test\` again." >&2
    exit 1
  fi
  echo "prepare-machine: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The shaped-link tests make network namespaces; only root (or a container with
# CAP_SYS_ADMIN and CAP_NET_ADMIN) can.
if [ -d tests/netlab ] && ! unshare --net true 2>/dev/null; then
  echo "make test: the shaped-link tests in tests/netlab make network namespaces, which" \
    "this user cannot. Run \`make test\` as root (in a container: with CAP_SYS_ADMIN and" \
    "CAP_NET_ADMIN)." >&2
  exit 1
fi
echo "prepare-machine: postgresql, redis-server, coturn, chromium and npm are installed"
