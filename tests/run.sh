#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs pytest.
#   bash tests/run.sh            (the README's test command; CI's .ci/run calls it)
# Python packages go into .venv (created here) so the host's own packages never mix in. The browser tests
# need Debian's chromium: installed here when running as root, otherwise they say why they skip.
# Then the extension's tests run a second time in .venv-gradio3, on AUTOMATIC1111 1.6+'s gradio 3.41.2
# (.venv has Forge's gradio 4.40.0). Both runs must pass.
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
deactivate

# A1111's pins that matter to the tab: gradio 3.41.2 needs pydantic 1; huggingface-hub as in .venv.
GRADIO3_REQUIREMENTS=(pytest pytest-timeout httpx "gradio==3.41.2" "pydantic<2" "huggingface-hub==0.26.2"
                      "safetensors>=0.4.2" "numpy>=1.26" "openapi-spec-validator>=0.7")
gradio3_stamp="$(printf '%s\n' "${GRADIO3_REQUIREMENTS[@]}" | cat - pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv-gradio3/bin/python ]; then
  python3 -m venv .venv-gradio3
fi
if [ "$(cat .venv-gradio3/.requirements-stamp 2>/dev/null)" != "$gradio3_stamp" ]; then
  .venv-gradio3/bin/python -m pip install --quiet --upgrade pip
  .venv-gradio3/bin/python -m pip install --quiet -e . "${GRADIO3_REQUIREMENTS[@]}"
  echo "$gradio3_stamp" > .venv-gradio3/.requirements-stamp
fi

status=0
.venv/bin/python -m pytest "$@" || status=$?
echo "== the extension's tests on gradio $(.venv-gradio3/bin/python -c 'import gradio; print(gradio.__version__)') (.venv-gradio3)"
.venv-gradio3/bin/python -m pytest tests/test_extension*.py || status=$?
exit "$status"
