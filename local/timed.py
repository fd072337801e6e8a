#!/usr/bin/env python3
"""Run a command and report its wall time and peak resident memory (recipes' stage timing).

    python local/timed.py --label "stage 3" --log exp/x/stage_times.tsv -- CMD [ARGS...]

Prints ``<label>: <seconds> s wall, peak memory <MB> MB`` to stderr and, with ``--log``,
appends ``label<TAB>seconds<TAB>peak MB<TAB>exit status`` to that file. The peak is the largest
resident set of the command or any process it waited for (``getrusage(RUSAGE_CHILDREN)``).
Exits with the command's status (128 + N when it died of signal N). Standard library only, so
it adds a few milliseconds to a stage.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="command")
    parser.add_argument("--log", help="append a TSV line here")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given (use: -- CMD [ARGS...])")
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    status = 128 - rc if rc < 0 else rc
    print(f"{args.label}: {wall:.1f} s wall, peak memory {peak_mb:.0f} MB", file=sys.stderr)
    if args.log:
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        with open(args.log, "a") as f:  # one short append per stage: no partial file to fear
            f.write(f"{args.label}\t{wall:.1f}\t{peak_mb:.0f}\t{status}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
