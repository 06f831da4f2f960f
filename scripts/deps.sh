#!/usr/bin/env bash
# Installs what weft's lab, tests and benchmarks need on Debian, as root.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

PACKAGES=(
  iproute2 nftables iptables conntrack       # the kernel's network tools
  containernetworking-plugins                # the reference CNI plugins (side-by-side tests)
  containerd runc busybox-static             # a real runtime for the ctr test; busybox for pods
  iputils-ping iputils-arping socat dnsutils iperf3  # traffic in tests (arping: ARP spoofing)
  util-linux procps psmisc                   # setsid, unshare, nsenter, pkill
  dnsmasq-base                               # the lab's stub upstream DNS server
  hyperfine dnsperf unbound                  # benchmarks (unbound: the DNS peer)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  # Packages with a service (unbound) must not start it on the host: the
  # benchmarks run their own instance inside a namespace.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# containerd's Debian service may start on install; weft's tests run their
# own containerd inside a namespace, so the host one is not needed.

if ! command -v cargo >/dev/null 2>&1; then
  for c in "$HOME/.cargo/bin/cargo" /usr/local/cargo/bin/cargo; do
    [ -x "$c" ] && export PATH="$(dirname "$c"):$PATH" && break
  done
fi
command -v cargo >/dev/null 2>&1 || {
  echo "cargo not found: weft needs a Rust toolchain >= 1.89 (rustup)" >&2
  exit 1
}
