#!/usr/bin/env bash
# Quick start, part 1: bring up the demo lab and show two pods talking.
# Run as root on Debian. Everything happens inside network namespaces named
# weft-demo.*; `target/release/weft lab down --name demo` removes them.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/deps.sh
cargo build --release --quiet -p weft -p weft-cni
W=target/release/weft

$W lab down --name demo >/dev/null 2>&1 || true
$W lab up --name demo -f examples/demo
web=$($W lab status --name demo | awk '$1=="default/web" && $2 ~ /^node-/{print $3}')
sleep 0.5

echo
echo "# client pod -> web pod, ping:"
$W lab exec --name demo default/client -- ping -c 2 "$web"
echo
echo "# client pod -> web pod, HTTP:"
$W lab exec --name demo default/client -- busybox wget -qO- "http://$web:8080/"
svc=$($W lab status --name demo | awk '$1=="default/web" && $2=="NodePort"{print $3}')
echo
echo "# client pod -> Service web ($svc), proxied by the node's agent:"
$W lab exec --name demo default/client -- busybox wget -qO- "http://$svc/"
echo
echo "# client pod -> Service web by name, through the cluster DNS (weft dns at 10.96.0.10):"
$W lab exec --name demo default/client -- cat /etc/resolv.conf
$W lab exec --name demo default/client -- nslookup web
$W lab exec --name demo default/client -- busybox wget -qO- "http://web/"
echo
echo "# the node's side: bridge weft0 with the pods' veths"
$W lab exec --name demo node/node-1 -- ip -br link show master weft0
cat <<MSG

The lab is up. Try:
  $W lab status --name demo
  $W lab exec --name demo default/client -- sh
  $W lab down --name demo
MSG
