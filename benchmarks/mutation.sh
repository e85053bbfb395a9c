#!/usr/bin/env bash
# Mutation testing of the models: mutmut mutates recbole_elastic/model/ one change at a time and runs, for each
# mutant, the tests in tests/model/ that executed the mutated function; a mutant the tests do not fail "survived".
# Settings are in pyproject.toml ([tool.mutmut]); docs/MUTATION.md records the score and the survivors.
#   pip install ".[dev]"               # mutmut (and the test extra)
#   bash benchmarks/mutation.sh        # 2 workers (MUTATION_WORKERS), about 30 minutes on 2 cores
#   bash benchmarks/mutation.sh 'recbole_elastic.model.layers*'   # only the mutants whose name matches
# Afterwards: `mutmut results` lists the survivors, `mutmut show NAME` prints one as a diff. The working copy
# and cache live in mutants/ (git-ignored); delete it to start from scratch after changing the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# One torch thread per worker: the workers run side by side.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# mutmut imports the package from mutants/, not from an installed copy or the work tree.
unset PYTHONPATH
python -m mutmut run --max-children "${MUTATION_WORKERS:-2}" "$@"
python -m mutmut results
