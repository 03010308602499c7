#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs pytest.
#   bash tests/run.sh            (the README's test command; CI's .ci/run calls it)
# Python packages go into .venv (created here) so the host's own packages never mix in. The browser tests
# need Debian's chromium: installed here when running as root, otherwise they say why they skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[test]"

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: chromium could not be installed; browser tests will be skipped" >&2
fi

python -m pytest "$@"
