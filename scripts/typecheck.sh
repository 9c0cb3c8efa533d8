#!/usr/bin/env bash
# mypy --strict over the installed layout: classifiers/ and policies/ are mapped into
# safety_lora by setuptools' package-dir, which mypy cannot follow, so check a tree of links.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck
rm -rf "$tree" && mkdir -p "$tree/safety_lora"
for entry in safety_lora/*; do
  case "$(basename "$entry")" in __pycache__|classifiers|policies) continue ;; esac
  ln -s "$PWD/$entry" "$tree/safety_lora/"
done
ln -s "$PWD/classifiers" "$tree/safety_lora/classifiers"
ln -s "$PWD/policies" "$tree/safety_lora/policies"
cd "$tree" && "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" -p safety_lora
