#!/usr/bin/env bash
# Creates the LocalStack virtualenv the tests start LocalStack from (no Docker needed).
# LocalStack needs Python >= 3.12; it lives in its own venv, apart from the project's.
set -euo pipefail
venv="${LOCALSTACK_VENV:-.venv-localstack}"
marker="$venv/.installed-2026.3.0"
[ -f "$marker" ] && exit 0

find_python() {
  local candidate
  for candidate in python3.13 python3.12; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  for candidate in "$HOME"/.pyenv/versions/3.13*/bin/python3.13 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
                   /usr/bin/python3.13 /usr/bin/python3.12 /usr/local/bin/python3.13 /usr/local/bin/python3.12; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

if ! python="$(find_python)"; then
  echo "!!! LocalStack needs Python >= 3.12 and none was found: S3/SQS tests will be skipped" >&2
  exit 0
fi
echo "setting up LocalStack in $venv with $python"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "localstack-core[base-runtime]==2026.3.0" moto-ext==5.1.25 cbor2==5.8.0 pyopenssl==25.3.0 localstack-twisted==25.5.0
touch "$marker"
