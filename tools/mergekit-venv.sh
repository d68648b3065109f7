#!/usr/bin/env bash
# The side environment the mergekit comparison tests (tests/test_hf.py) and
# benchmarks/bench_mergekit.py run against: mergekit 0.1.5 (benchmarks/mergekit-
# requirements.txt) in benchmarks/.venv-mergekit (git-ignored). mergekit is not a
# dependency of modelsoup, so it gets its own environment.
#
# Run with the test environment active (as the README's test command does), the side
# environment sees that environment's packages through a .pth file, so torch (the CPU
# build of constraints.txt) and transformers are not installed twice: whatever mergekit
# needs in another version is installed into the side environment only, which comes
# first on its path; the test environment is never written to. Setting it up takes
# about 11 s instead of 2.5 min. It is reused when it already holds the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benchmarks/.venv-mergekit
want=$(sed -n 's/^mergekit==//p' benchmarks/mergekit-requirements.txt)
if "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mergekit') != '$want')" 2>/dev/null; then
  exit 0
fi
shared=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --clear "$venv"
own=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$shared" > "$own/_shared_test_environment.pth"
"$venv/bin/pip" install -q -c constraints.txt -r benchmarks/mergekit-requirements.txt
