#!/usr/bin/env bash
# Installs what building and testing Volt needs on a fresh Debian machine. Safe to run again.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi
echo "setup: $(cargo --version)"
