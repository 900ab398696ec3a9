#!/usr/bin/env bash
# Proof that the two commands work on a bare machine: in a fresh clone of this checkout, with an empty HOME
# and only the system's PATH (so no uv, no pyenv, the first python3 is the OS's), `make run` serves /healthz
# and `make test-deps` (the install step of `make test`) succeeds. Prints the time from clone to /healthz.
#   BARE_PORT=8230 bash scripts/check-bare.sh      (default: a free port)
set -euo pipefail
cd "$(dirname "$0")/.."
src="$PWD"
bare_path=/usr/sbin:/usr/bin:/sbin:/bin
work="$(mktemp -d "${TMPDIR:-/tmp}/chat-bare.XXXXXX")"

stop_run() {  # TERM to the whole process group of `make run` (make, uv, uvicorn), then wait; KILL after 30 s
  local pgid t0
  [ -s "$work/run.pgid" ] || return 0
  pgid="$(cat "$work/run.pgid")"; rm -f "$work/run.pgid"
  kill -0 -- "-$pgid" 2>/dev/null || return 0
  t0=$(date +%s.%N)
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 -- "-$pgid" 2>/dev/null; then
    kill -KILL -- "-$pgid" 2>/dev/null || true
    echo "!!! bare check: \`make run\` ignored SIGTERM for 30 s and was killed" >&2
    return 1
  fi
  echo "bare check: \`make run\` stopped cleanly on SIGTERM in $(elapsed "$t0" "$(date +%s.%N)") s"
}
cleanup() { stop_run || true; rm -rf "$work"; }
trap cleanup EXIT

port="${BARE_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
bare() {  # $1: HOME; the rest: the command
  local home="$1"; shift
  env -i HOME="$home" PATH="$bare_path" LANG=C.UTF-8 "$@"
}
python3 -c "import socket; socket.create_server(('127.0.0.1', $port)).close()" 2>/dev/null \
  || { echo "!!! bare check: port $port is taken" >&2; exit 1; }
echo "bare check: python3 on the bare PATH is $(PATH=$bare_path command -v python3) ($(PATH=$bare_path python3 -V 2>&1))"

# --- make run -------------------------------------------------------------------------------------------
start=$(date +%s.%N)
git clone --quiet "$src" "$work/run"
mkdir "$work/home-run"
# in a session of its own (setsid), whose id it writes down, so stopping it stops uv and uvicorn too
( cd "$work/run" && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$work/run.pgid" \
    env -i HOME="$work/home-run" PATH="$bare_path" LANG=C.UTF-8 PORT="$port" make run >"$work/run.log" 2>&1 ) &
deadline=$(( $(date +%s) + ${BARE_TIMEOUT:-900} ))
until python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=2).status != 200)" 2>/dev/null; do
  if { [ -s "$work/run.pgid" ] && ! kill -0 -- "-$(cat "$work/run.pgid")" 2>/dev/null; } \
     || [ "$(date +%s)" -gt "$deadline" ]; then
    tail -n 40 "$work/run.log" >&2
    echo "!!! bare check: \`make run\` did not serve /healthz on port $port" >&2
    exit 1
  fi
  sleep 0.5
done
served=$(date +%s.%N)
printf 'bare check: clone -> /healthz on port %s in %s s (make run, empty HOME, PATH=%s)\n' \
  "$port" "$(elapsed "$start" "$served")" "$bare_path"
grep -E 'installing uv|uv-venv|Installed [0-9]+ packages' "$work/run.log" | sed 's/^/  | /' || true
if [ -e "$work/run/.venv/bin/pytest" ] || [ -e "$work/run/.venv/bin/mypy" ]; then
  echo "!!! bare check: \`make run\` installed dev dependencies" >&2; exit 1
fi
stop_run

# --- make test-deps (the install step of make test) -----------------------------------------------------
start=$(date +%s.%N)
git clone --quiet "$src" "$work/test"
mkdir "$work/home-test"
if ! ( cd "$work/test" && bare "$work/home-test" make test-deps ) >"$work/test.log" 2>&1; then
  tail -n 40 "$work/test.log" >&2
  echo "!!! bare check: \`make test-deps\` failed" >&2
  exit 1
fi
grep -E '^!!!|installing' "$work/test.log" | sed 's/^/  | /' || true
[ -x "$work/test/.venv/bin/pytest" ] || { echo "!!! bare check: \`make test-deps\` left no pytest" >&2; exit 1; }
printf 'bare check: clone -> make test-deps done in %s s\n' "$(elapsed "$start" "$(date +%s.%N)")"
