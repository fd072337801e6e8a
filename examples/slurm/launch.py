#!/usr/bin/env python3
"""``torchrun`` with the rendezvous failures in one line.

Takes exactly ``torchrun``'s arguments and runs ``torch.distributed.run`` (the code behind
``torchrun``)::

    python examples/slurm/launch.py --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29400 --rdzv_id JOB --rdzv_conf join_timeout=900 \\
        -m wfst_asr.bin.cli train --config ... --exp-dir ... --resume

``torchrun`` ends a rendezvous that never completes (a node that did not start, or cannot reach
the endpoint) with a bare ``RendezvousTimeoutError`` traceback that names neither the endpoint
nor the timeout. Here that is one line on stderr, exit code 1::

    launch.py: error: rendezvous 'JOB' at HOST:29400 timed out after 900 s (join_timeout): \
fewer than 2 nodes joined; ...

Everything else (a worker that fails, its exit code, ``--max-restarts``) is ``torchrun``'s.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

#: torch's defaults (torch/distributed/elastic/rendezvous/{dynamic,c10d}_rendezvous*.py)
DEFAULT_TIMEOUTS = {"join_timeout": 600, "read_timeout": 60}


def rdzv_conf(text: str) -> dict[str, str]:
    """``--rdzv_conf`` (``key=value,key=value``) as a dict."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def rendezvous_message(e: BaseException, args) -> str:
    """One line for a rendezvous error ``e`` of the launch ``args`` (torchrun's namespace)."""
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousConnectionError,
        RendezvousTimeoutError,
    )
    from torch.distributed.run import parse_min_max_nnodes

    conf = rdzv_conf(args.rdzv_conf or "")
    where = f"rendezvous {args.rdzv_id!r} at {args.rdzv_endpoint or '(no --rdzv_endpoint)'}"
    min_nodes, max_nodes = parse_min_max_nnodes(args.nnodes)
    nodes = f"{min_nodes}" if min_nodes == max_nodes else f"at least {min_nodes}"
    if isinstance(e, RendezvousTimeoutError):
        key = "join_timeout"
        what = (f"timed out after {conf.get(key, DEFAULT_TIMEOUTS[key])} s ({key}): fewer than "
                f"{nodes} nodes joined; start the launcher on every node with the same "
                "--rdzv_endpoint and --rdzv_id, or raise --rdzv_conf join_timeout=SECONDS")
    elif isinstance(e, RendezvousConnectionError):
        key = "read_timeout"
        cause = e.__cause__ or e
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()),
                     type(cause).__name__)
        what = (f"could not be reached within {conf.get(key, DEFAULT_TIMEOUTS[key])} s "
                f"({key}): {first.rstrip('.')}; is the node hosting it (the first of the job) up, "
                "its port free and open?")
    else:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        what = f"failed: {type(e).__name__}{': ' + first if first else ''}"
    return f"{os.path.basename(sys.argv[0]) or 'launch.py'}: error: {where} {what}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchrun argv``; a rendezvous error is one line on stderr and exit code 1."""
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import main as torchrun_main
    from torch.distributed.run import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        torchrun_main(argv)
    except RendezvousError as e:
        print(rendezvous_message(e, args), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
