#!/usr/bin/env bash
# Creates the LocalStack virtualenv the tests start LocalStack from (no Docker needed).
# LocalStack needs Python >= 3.12; it lives in its own venv, apart from the project's.
set -euo pipefail
venv="${LOCALSTACK_VENV:-.venv-localstack}"
marker="$venv/.installed-2026.3.0"
[ -f "$marker" ] && exit 0

# A Python >= 3.12 from PATH, uv, pyenv or Homebrew, else `uv python install 3.12` (scripts/bootstrap.sh).
if ! python="$(bash "$(dirname "$0")/bootstrap.sh" python312)"; then
  echo "!!! LocalStack needs Python >= 3.12 and none could be had: S3/SQS tests will be skipped (they fail under CHAT_REQUIRE_BACKENDS=localstack)" >&2
  exit 0
fi
echo "setting up LocalStack in $venv with $python"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "localstack-core[base-runtime]==2026.3.0" moto-ext==5.1.25 cbor2==5.8.0 pyopenssl==25.3.0 localstack-twisted==25.5.0
touch "$marker"
