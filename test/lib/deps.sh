#!/usr/bin/env bash
# deps.sh PKG... — install the Debian packages that are missing, then the npm
# test peers (test/package.json) when node is present.  Idempotent.
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "paygate: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# node runs the integration tests and simulators; the machine image ships it,
# a bare Debian gets Debian's nodejs + npm.
if ! command -v node >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -f "$here/package.json" ] && command -v npm >/dev/null; then
  if [ ! -d "$here/node_modules" ] || [ "$here/package.json" -nt "$here/node_modules/.stamp" ]; then
    (cd "$here" && npm install --no-audit --no-fund --loglevel=error >/dev/null && touch node_modules/.stamp)
  fi
fi
