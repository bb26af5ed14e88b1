#!/usr/bin/env bash
# Installs what building and testing Volt needs on a fresh Debian machine. Safe to run again.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi
# Mesa's software Vulkan (lavapipe): every WGSL kernel runs on it when there is no GPU.
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null; } ||
      echo "setup: could not install mesa-vulkan-drivers; the wgpu tests will print SKIP" >&2
  else
    echo "setup: install mesa-vulkan-drivers for the wgpu tests (without a GPU adapter they print SKIP)" >&2
  fi
fi
# The desktop app's window test: a virtual X server, a typist and a screenshot tool; winit loads the X
# libraries at run time.
if ! command -v Xvfb >/dev/null 2>&1 || ! command -v xdotool >/dev/null 2>&1 || ! command -v import >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        xvfb xdotool imagemagick libxkbcommon-x11-0 libxcursor1 libxi6 libxrandr2 >/dev/null; } ||
      echo "setup: could not install xvfb, xdotool and imagemagick; the window test will print SKIP" >&2
  else
    echo "setup: install xvfb, xdotool and imagemagick for the window test (without them it prints SKIP)" >&2
  fi
fi
echo "setup: $(cargo --version); vulkan drivers: $(ls /usr/share/vulkan/icd.d/ 2>/dev/null | tr '\n' ' ')"
