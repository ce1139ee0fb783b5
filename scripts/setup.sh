#!/usr/bin/env bash
# Set up napari-anogan on a fresh Debian/Ubuntu machine (CPU): system libraries for
# napari under a virtual display, a venv in .venv, the CPU build of torch, the project.
# Usage: bash scripts/setup.sh            (then: .venv/bin/napari-anogan demo)
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Qt/OpenGL/Xvfb libraries napari needs (also headless, under xvfb-run).
  apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libdbus-1-3 \
    libfontconfig1 fonts-dejavu-core libx11-xcb1 libxcb-cursor0 libxcb-icccm4 libxcb-image0 \
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 \
    libxcb-xfixes0 libxcb-xkb1 libxcb-sync1 libxcb-shm0 >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch first: the project's open torch range then pulls no CUDA build.
# (GPU users: install the CUDA build of torch you want instead of this line.)
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[testing]"
echo "napari-anogan installed in .venv"
