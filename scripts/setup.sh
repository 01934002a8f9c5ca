#!/usr/bin/env bash
# Installs everything livegate needs to build and test on Debian 12 (bookworm).
# Idempotent and fast (< 2 s) when everything is present: `make test` / `make run` call it every time.
#
# Environment:
#   LIVEGATE_SETUP_PROFILE=full   (default) build + test tools: ffmpeg, GStreamer, Chromium, Node, npm deps,
#                                 aiortc (PyPI) in the project-local virtualenv tests/aiortc/.venv
#   LIVEGATE_SETUP_PROFILE=build  only what `cargo build` needs (used by the Dockerfile build stage)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${LIVEGATE_SETUP_PROFILE:-full}"
RUST_TOOLCHAIN="${LIVEGATE_RUST_TOOLCHAIN:-1.95}"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

case "$PROFILE" in full|build) ;; *) die "unknown LIVEGATE_SETUP_PROFILE=$PROFILE (full|build)";; esac

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing"
  SUDO=(sudo)
fi

# ---------------------------------------------------------------- apt packages
PKGS=(build-essential pkg-config curl ca-certificates git openssl
      libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev)
if [ "$PROFILE" = full ]; then
  PKGS+=(ffmpeg
         gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
         gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice
         chromium fonts-dejavu-core python3 python3-venv stress-ng rtmpdump
         libnginx-mod-rtmp redis-server)
  # Node: Debian's nodejs + npm only if there is no node at all (a NodeSource node ships its own npm).
  if ! command -v node >/dev/null 2>&1; then
    PKGS+=(nodejs npm)
  elif ! command -v npm >/dev/null 2>&1; then
    PKGS+=(npm)
  fi
fi

# One dpkg-query for all packages; anything not "ii" is missing.
installed="$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${PKGS[@]}" 2>/dev/null | awk '$1=="ii"{print $2}' || true)"
MISSING=()
for p in "${PKGS[@]}"; do
  grep -qxF "$p" <<<"$installed" || MISSING+=("$p")
done

if [ "${#MISSING[@]}" -gt 0 ]; then
  log "installing apt packages: ${MISSING[*]}"
  export DEBIAN_FRONTEND=noninteractive
  APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 -q)
  "${APT[@]}" update
  "${APT[@]}" install -y --no-install-recommends "${MISSING[@]}"
fi

# ---------------------------------------------------------------- Rust
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  log "installing Rust $RUST_TOOLCHAIN via rustup"
  curl --proto '=https' --tlsv1.2 https://sh.rustup.rs -sSf \
    | sh -s -- -y --profile minimal --default-toolchain "$RUST_TOOLCHAIN"
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null 2>&1 || die "cargo fmt / cargo clippy missing and no rustup to add them"
  log "adding rustfmt + clippy components"
  rustup component add rustfmt clippy
fi

# ---------------------------------------------------------------- npm deps for browser tests
if [ "$PROFILE" = full ]; then
  BDIR="$ROOT/tests/browser"
  if [ -f "$BDIR/package-lock.json" ]; then
    # node_modules/.package-lock.json is written by npm at the end of a successful install.
    stamp="$BDIR/node_modules/.package-lock.json"
    if [ ! -f "$stamp" ] || [ "$BDIR/package-lock.json" -nt "$stamp" ]; then
      log "npm ci in tests/browser"
      (cd "$BDIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
      touch "$stamp"
    fi
  fi
fi

# ---------------------------------------------------------------- aiortc for the non-browser WebRTC tests
# Debian's python3 is "externally managed" (PEP 668): aiortc goes into a virtualenv of the project's own,
# made with Debian's /usr/bin/python3 (not whatever python3 comes first on PATH). The stamp is a copy of the
# requirements it was installed from: a changed requirements.txt reinstalls, an unchanged one costs a cmp.
if [ "$PROFILE" = full ]; then
  ADIR="$ROOT/tests/aiortc"
  VENV="$ADIR/.venv"
  stamp="$VENV/.requirements.installed"
  if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$ADIR/requirements.txt" "$stamp"; then
    log "installing aiortc into tests/aiortc/.venv"
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$ADIR/requirements.txt"
    "$VENV/bin/python" -c 'import aiortc, av, numpy' || die "aiortc does not import in $VENV"
    cp "$ADIR/requirements.txt" "$stamp"
  fi
fi

log "ok ($PROFILE)"
