#!/usr/bin/env bash
# A minimal recipe that needs no data: print the environment, then run the CTC demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python=.venv/bin/python
[[ -x "$python" ]] || python=python3
"$python" -m wfst_asr.bin.cli info
if [[ -f examples/ctc_demo.py ]]; then
    "$python" examples/ctc_demo.py
else
    echo "egs/mini: examples/ctc_demo.py not written yet; skipping the demo"
fi
