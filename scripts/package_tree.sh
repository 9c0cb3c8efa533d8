#!/usr/bin/env bash
# build/package/safety_lora: the installed layout as a tree of links. classifiers/ and policies/
# are mapped into safety_lora by setuptools' package-dir, which mypy and griffe (the API
# reference) cannot follow from the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/package
rm -rf "$tree" && mkdir -p "$tree/safety_lora"
for entry in safety_lora/*; do
  case "$(basename "$entry")" in __pycache__|classifiers|policies) continue ;; esac
  ln -s "$PWD/$entry" "$tree/safety_lora/"
done
ln -s "$PWD/classifiers" "$tree/safety_lora/classifiers"
ln -s "$PWD/policies" "$tree/safety_lora/policies"
