#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install napari-bigl into it.
#   bash scripts/setup.sh          # library + napari plugin
#   bash scripts/setup.sh --test   # ... plus test tools and the X server packages the GUI tests need
# The venv is .venv in the repo root unless BIGL_VENV names another; an already active venv is used as is.
set -euo pipefail
cd "$(dirname "$0")/.."

extra="napari"
if [[ "${1:-}" == "--test" ]]; then
  extra="test"
  # napari renders through vispy/OpenGL and needs an X server: Xvfb + Mesa (Debian package names).
  pkgs=(xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
        libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
        libxcb-cursor0 libdbus-1-3 libfontconfig1)
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if (( ${#missing[@]} )); then
    sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
    echo "installing system packages: ${missing[*]}"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  venv="$VIRTUAL_ENV"
else
  venv="${BIGL_VENV:-.venv}"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
# torch first and pinned: any looser requirement pulls several GB of CUDA wheels on a CPU machine.
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install -e ".[$extra]"
echo "$venv"
