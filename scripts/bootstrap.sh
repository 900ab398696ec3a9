#!/usr/bin/env bash
# What the Makefile's targets install, from nothing but bash, make and a system Python (python3 >= 3.9).
#
#   scripts/bootstrap.sh uv                  uv on PATH or in .tools/bin (installed into a project-local venv)
#   scripts/bootstrap.sh run                 uv + the runtime dependencies only (`make run`)
#   scripts/bootstrap.sh test                uv + runtime and dev dependencies, redis-server, prometheus (+ promtool), the
#                                            LocalStack venv (`make test`, `make test-deps`)
#   scripts/bootstrap.sh python312           prints a Python >= 3.12 (for LocalStack), via uv when needed
#   scripts/bootstrap.sh system PKG[=CMD]... apt-installs each Debian package whose command CMD is missing
#
# Nothing is installed into the system Python (PEP 668 forbids it on Debian, Ubuntu and Homebrew). uv comes,
# in order, from PATH, from .tools/uv-venv (made here with `python3 -m venv` + pip from PyPI), from pipx, or
# from the official installer; if none can work, one line names what is missing and how to install it.
# System packages are installed with apt only as root or with password-less sudo; otherwise one line says
# exactly what to run, and the tests that need the missing piece skip loudly (fail under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="$ROOT/.tools"
UV_MIN="0.8.0"          # uv.lock is revision 3: uv >= 0.8 reads it
LOCALSTACK_PYTHON="3.12"

# uv trusts the platform's certificate store (corporate proxies with their own root CA, as on CI here)
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}" UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"
export PATH="$PATH:$TOOLS/bin"

say() { printf '%s\n' "$*" >&2; }
die() { printf '!!! %s\n' "$*" >&2; exit 1; }

os_hint() {  # $1: Debian package, $2: Homebrew formula
  if [ "$(uname -s)" = Darwin ]; then echo "brew install $2"; else echo "sudo apt-get install -y $1"; fi
}

can_apt() {  # root, or sudo without a password, on an apt system
  command -v apt-get >/dev/null 2>&1 || return 1
  [ "$(id -u)" = 0 ] && return 0
  command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null
}

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  say "installing with apt: $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

version_ok() {  # $1 >= $2
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

uv_usable() {  # $1: a uv binary
  local v
  v="$("$1" --version 2>/dev/null | awk '{print $2}')" || return 1
  [ -n "$v" ] && version_ok "$v" "$UV_MIN"
}

link_uv() {  # $1: a uv binary to expose as .tools/bin/uv (the Makefile puts .tools/bin on PATH)
  mkdir -p "$TOOLS/bin"
  ln -sfn "$1" "$TOOLS/bin/uv"
}

install_uv_venv() {
  local py
  py="$(command -v python3 || true)"
  [ -n "$py" ] || return 1
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || return 1
  if [ ! -x "$TOOLS/uv-venv/bin/python" ]; then
    rm -rf "$TOOLS/uv-venv"
    if ! "$py" -m venv "$TOOLS/uv-venv" >/dev/null 2>&1; then
      rm -rf "$TOOLS/uv-venv"
      # Debian and Ubuntu ship venv's pip bootstrap separately
      can_apt || return 1
      apt_install python3-venv
      "$py" -m venv "$TOOLS/uv-venv" >/dev/null 2>&1 || { rm -rf "$TOOLS/uv-venv"; return 1; }
    fi
  fi
  say "installing uv from PyPI into .tools/uv-venv (with $py)"
  "$TOOLS/uv-venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=$UV_MIN" || return 1
  link_uv "$TOOLS/uv-venv/bin/uv"
}

install_uv_pipx() {
  command -v pipx >/dev/null 2>&1 || return 1
  say "installing uv with pipx"
  pipx install "uv>=$UV_MIN" >/dev/null || return 1
  link_uv "$(pipx environment --value PIPX_BIN_DIR 2>/dev/null || echo "$HOME/.local/bin")/uv"
}

install_uv_official() {
  local dir="$TOOLS/uv-official"
  say "installing uv with the official installer (https://astral.sh/uv/install.sh)"
  if command -v curl >/dev/null 2>&1; then
    curl -LsSf --max-time 60 https://astral.sh/uv/install.sh 2>/dev/null | env UV_UNMANAGED_INSTALL="$dir" sh >/dev/null 2>&1
  elif command -v wget >/dev/null 2>&1; then
    wget -qO- --timeout=60 https://astral.sh/uv/install.sh 2>/dev/null | env UV_UNMANAGED_INSTALL="$dir" sh >/dev/null 2>&1
  else
    return 1
  fi || return 1
  link_uv "$dir/uv"
}

ensure_uv() {
  local found
  found="$(command -v uv || true)"
  if [ -n "$found" ] && uv_usable "$found"; then return 0; fi
  [ -n "$found" ] && say "uv at $found is older than $UV_MIN: installing a project-local one"
  install_uv_venv || install_uv_pipx || install_uv_official || {
    if ! command -v python3 >/dev/null 2>&1; then
      die "missing prerequisite: python3 >= 3.9 (install it: $(os_hint python3 python@3.12)), or uv (https://docs.astral.sh/uv/)"
    fi
    die "missing prerequisite: python3's venv module (install it: $(os_hint python3-venv python@3.12)), or uv (https://docs.astral.sh/uv/)"
  }
  uv_usable "$TOOLS/bin/uv" || die "uv was installed in $TOOLS/bin but does not run: remove .tools and retry"
}

# A Python >= 3.12 (LocalStack's). Prints its path; exits 1 with one line when there is none.
python_ok() {  # $1: a candidate; prints the real interpreter when it runs and is >= 3.12 (a pyenv shim may not)
  [ -n "$1" ] || return 1
  "$1" -c 'import sys; assert sys.version_info >= (3, 12); print(sys.executable)' 2>/dev/null
}
find_python312() {
  local candidate
  python_ok "$(uv python find ">=$LOCALSTACK_PYTHON" 2>/dev/null)" && return 0
  for candidate in python3.13 python3.12; do
    python_ok "$(command -v "$candidate")" && return 0
  done
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 \
                   "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
                   /opt/homebrew/bin/python3.13 /opt/homebrew/bin/python3.12 \
                   /usr/local/bin/python3.13 /usr/local/bin/python3.12 /usr/bin/python3.13 /usr/bin/python3.12; do
    python_ok "$candidate" && return 0
  done
  say "no Python >= $LOCALSTACK_PYTHON here: trying \`uv python install $LOCALSTACK_PYTHON\`"
  if uv python install "$LOCALSTACK_PYTHON" >/dev/null 2>&1 \
     && python_ok "$(uv python find "$LOCALSTACK_PYTHON" 2>/dev/null)"; then
    return 0
  fi
  say "!!! no Python >= $LOCALSTACK_PYTHON: none installed, and \`uv python install $LOCALSTACK_PYTHON\` failed (it downloads from GitHub); install one: $(os_hint 'python3.12 (Ubuntu 24.04+)' python@3.12), or pyenv install $LOCALSTACK_PYTHON"
  return 1
}

# system PKG[=CMD]...: for each package whose command (CMD, default PKG) is missing, apt-install it when
# allowed; otherwise print the one command that would. Never fails: the tests that need it skip loudly.
# Debian's prometheus package starts a server on :9090 where an init system runs; the tests start their
# own on a free port, so a freshly installed packaged one is stopped (and kept from starting again).
stop_packaged_prometheus() {
  case " $* " in *" prometheus "*) ;; *) return 0 ;; esac
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif [ -f /run/prometheus/prometheus.pid ]; then
    $sudo kill "$(cat /run/prometheus/prometheus.pid)" 2>/dev/null || true
  fi
}

system_packages() {
  local spec pkg cmd missing=()
  for spec in "$@"; do
    pkg="${spec%%=*}"; cmd="${spec#*=}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if can_apt; then
    apt_install "${missing[@]}" || say "!!! apt-get install ${missing[*]} failed"
    stop_packaged_prometheus "${missing[@]}"
  elif [ "$(uname -s)" = Darwin ]; then
    say "!!! missing: ${missing[*]} (Homebrew: brew install ${missing[*]/redis-server/redis}); the tests that need them will skip"
  else
    say "!!! missing: ${missing[*]}; not root and no password-less sudo, so run: sudo apt-get install -y ${missing[*]}  (the tests that need them will skip)"
  fi
}

case "${1:-}" in
  uv)
    ensure_uv ;;
  run)
    ensure_uv
    # runtime dependencies only; --inexact keeps a developer's dev tools in .venv
    uv sync --frozen --no-dev --inexact ;;
  test)
    ensure_uv
    uv sync --frozen
    system_packages redis-server prometheus=prometheus prometheus=promtool
    bash scripts/setup-localstack.sh
    [ -x "${FIRESTORE_EMULATOR_BIN:-/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator}" ] || \
      say "!!! the Firestore emulator is not installed: tests marked 'firestore' will be skipped (optional; see docs/getting-started.md, Prerequisites)"
    ;;
  python312)
    ensure_uv
    find_python312 ;;
  system)
    shift; system_packages "$@" ;;
  *)
    die "usage: scripts/bootstrap.sh uv|run|test|python312|system PKG[=CMD]..." ;;
esac
