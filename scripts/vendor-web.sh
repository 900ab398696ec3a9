#!/usr/bin/env bash
# Re-vendors the web client's pinned ES modules from the npm registry (`make web`); output is committed.
# Bare imports are rewritten to relative ones (no import map: it would be inline script under the CSP),
# and source-map comments are dropped (the maps are not shipped).
set -euo pipefail
PREACT=11.2.0
HTM=3.1.1
out="$(cd "$(dirname "$0")/.." && pwd)/src/chat_management/web/vendor"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "preact@$PREACT" "htm@$HTM" >/dev/null
mkdir preact htm
tar xzf "preact-$PREACT.tgz" -C preact
tar xzf "htm-$HTM.tgz" -C htm
mkdir -p "$out"
strip() { sed -e '/^\/\/# sourceMappingURL=/d' "$1"; }
strip preact/package/dist/preact.mjs > "$out/preact.mjs"
strip preact/package/hooks/dist/hooks.mjs | sed -e 's/from"preact"/from".\/preact.mjs"/' > "$out/hooks.mjs"
strip htm/package/dist/htm.mjs > "$out/htm.mjs"
{ echo "preact $PREACT (MIT), hooks: preact/hooks $PREACT, htm $HTM (Apache-2.0), from the npm registry"
  echo "by scripts/vendor-web.sh; do not edit by hand."; } > "$out/VERSIONS"
cp preact/package/LICENSE "$out/LICENSE-preact"
cp htm/package/LICENSE "$out/LICENSE-htm"
echo "vendored into $out"
