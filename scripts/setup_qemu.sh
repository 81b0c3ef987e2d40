#!/usr/bin/env bash
# Debian's qemu-user (as root, where apt-get exists), for the INT8 checks on an emulated
# AVX2-only x86 CPU (scripts/avx2.sh): the tests that need it run there, and skip with the
# reason elsewhere. Exit 0 with a line saying so when it cannot be installed.
set -euo pipefail
have() { command -v "$1" > /dev/null 2>&1; }
[ "$(uname -m)" = x86_64 ] || { echo "setup_qemu: not an x86-64 machine: the AVX2 checks will skip"; exit 0; }
if ! have qemu-x86_64 && [ "$(id -u)" = 0 ] && have apt-get; then
  echo "== setup_qemu: installing Debian's qemu-user"
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user) \
    > /tmp/matryoshka-apt-qemu.log 2>&1 || echo "setup_qemu: apt-get install qemu-user failed (see /tmp/matryoshka-apt-qemu.log)"
fi
have qemu-x86_64 || echo "setup_qemu: qemu-x86_64 not found: the AVX2 checks will skip"
