#!/usr/bin/env bash
# mypy --strict over the installed layout (see package_tree.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/package_tree.sh
cd build/package && "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" -p safety_lora
