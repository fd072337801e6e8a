#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv); cheap when nothing changed.
#
#   scripts/setup_env.sh            # run it
#   source scripts/setup_env.sh     # or source it (run.sh and run_tests.sh do)
#
# Steps, each skipped when already done:
#   1. create .venv with python3;
#   2. install torch==2.13.0 (a CPU build; never an unpinned `torch`, which would pull a
#      multi-GB CUDA build) if the venv has no importable torch;
#   3. `pip install -e ".[dev]"` if .venv/.wfst_asr_installed is missing or older than
#      setup.py / pyproject.toml;
#   4. `apt-get install -y graphviz` if `dot` is missing and we are root with apt-get
#      (best effort: a failure only prints a note).
# The work runs in a subshell with `set -euo pipefail`, so sourcing this file leaves the
# caller's shell options alone; a failed step makes it return (or exit) non-zero.

_wfst_setup_env() (
    set -euo pipefail
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.venv"
    py="$venv/bin/python"
    stamp="$venv/.wfst_asr_installed"

    if [[ ! -x "$py" ]]; then
        echo "setup_env: creating $venv"
        python3 -m venv "$venv"
    fi
    # find_spec: as good as `import torch` for "is it installed", without the ~1.5 s import.
    if ! "$py" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" \
        >/dev/null 2>&1; then
        echo "setup_env: installing torch==2.13.0 (CPU)"
        "$py" -m pip install --quiet "torch==2.13.0"
    fi
    if [[ ! -f "$stamp" || "$root/setup.py" -nt "$stamp" \
          || "$root/pyproject.toml" -nt "$stamp" ]]; then
        echo "setup_env: pip install -e .[dev]"
        (cd "$root" && "$py" -m pip install --quiet -e ".[dev]")
        touch "$stamp"
    fi
    if ! command -v dot >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] \
        && command -v apt-get >/dev/null 2>&1; then
        echo "setup_env: installing graphviz (for drawing FSAs)"
        { apt-get install -y -qq graphviz >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 \
                 && apt-get install -y -qq graphviz >/dev/null 2>&1; }; } \
            || echo "setup_env: note: could not install graphviz; FSAs cannot be drawn to images"
    fi
)

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    _wfst_setup_env
else
    _wfst_setup_env || { unset -f _wfst_setup_env; return 1; }
    unset -f _wfst_setup_env
fi
