#!/usr/bin/env bash
# Run the guard on the embedded default model: installs what is missing, then `guard serve`.
# Extra arguments go to `guard serve` (e.g. --port 8001, --policy policies/..., --upstream-url ...).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_guard_env
ensure_default_model
exec "$GUARD_VENV/bin/guard" serve "$@"
