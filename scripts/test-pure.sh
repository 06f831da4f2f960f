#!/usr/bin/env bash
# The pure tier: weft-core, weft-model and weft-source need no root, no
# namespaces and no network. Run as any user, or (as test.sh does, to
# keep it true) as root with every capability dropped, so that a test that
# quietly needs privilege fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
pure=(-p weft-core -p weft-model -p weft-source)
if [ "$(id -u)" != 0 ]; then
    exec cargo test --release "${pure[@]}" "$@"
fi
# Build as root (the target directory is root's), run without privilege.
# (grep, not a JSON tool: a fresh Debian has neither python nor jq.)
bins=$(cargo test --release --workspace --no-run --message-format=json "$@" 2>/dev/null |
    grep -E '"package_id":"[^"]*/crates/weft-(core|model|source)#' |
    grep -oE '"executable":"[^"]+"' | cut -d'"' -f4 | sort -u)
[ -n "$bins" ] || { echo "test-pure: no test binaries found" >&2; exit 1; }
for b in $bins; do
    echo "== $(basename "$b") (no capabilities)"
    setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- "$b" -q
done
