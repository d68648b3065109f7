#!/usr/bin/env bash
# The side environment the mergekit comparison tests (tests/test_hf.py) and
# benchmarks/bench_mergekit.py run against: mergekit 0.1.5 with the same CPU torch
# (constraints.txt), in benchmarks/.venv-mergekit (git-ignored). mergekit is not a
# dependency of modelsoup; it gets its own environment so its pins never touch ours.
# Reused when it already holds the pinned version, so a second run costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benchmarks/.venv-mergekit
want=$(sed -n 's/^mergekit==//p' benchmarks/mergekit-requirements.txt)
if "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mergekit') != '$want')" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q -c constraints.txt -r benchmarks/mergekit-requirements.txt
