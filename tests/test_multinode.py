"""Multi-node training: torchrun's c10d rendezvous across two local "nodes", its timeout, the
process-group timeout of :func:`~wfst_asr.train.trainer.init_distributed`, and the SLURM
example (examples/slurm/).

The two nodes are two ``torchrun --nnodes 2 --nproc_per_node 1`` agents on this machine that
meet at ``127.0.0.1:PORT``; their losses are compared with the same training on one node.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_train
from test_train import REPO, _cli_args, _env

from wfst_asr.bin.cli import error_message, is_bad_input
from wfst_asr.train import load_checkpoint
from wfst_asr.train.trainer import (
    DIST_TIMEOUT_ENV,
    DistributedInitError,
    _dist_timeout,
    init_distributed,
)

#: test_train's module-scoped fixture: tiny train/dev cuts and a token table
data = test_train.data

SLURM = REPO / "examples" / "slurm"
LAUNCH = SLURM / "launch.py"
SBATCH = SLURM / "train.sbatch"
slow = pytest.mark.skipif(os.environ.get("WFST_ASR_SKIP_SLOW") == "1",
                          reason="slow (5 to 15 s): WFST_ASR_SKIP_SLOW=1")


def _torchrun() -> str:
    path = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not os.path.exists(path):
        pytest.skip("torchrun is not available")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(launcher: list[str], port: int, rdzv_id: str, join_timeout: int,
          args: list[str]) -> list[str]:
    """One node's command: ``launcher`` (torchrun or launch.py) for 2 nodes x 1 process."""
    return [*launcher, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", rdzv_id,
            "--rdzv_conf", f"join_timeout={join_timeout}", "-m", "wfst_asr.bin.cli", *args]


def _start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, on CPU (gloo: two local "nodes" cannot share
    one GPU under nccl), stdout and stderr captured."""
    env = {**(env or _env()), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, tuple[int, str]]:
    """Wait for every process (all of them killed, with their process groups, after
    ``timeout`` s in all): ``{name: (returncode, stderr)}``."""
    deadline = time.monotonic() + timeout
    out = {}
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            out[name] = (proc.returncode, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return out


def _losses(exp: Path, epochs: int) -> list[tuple[float, float]]:
    history = load_checkpoint(exp / f"epoch-{epochs}.pt")["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    return [(h["train_loss"], h["dev_loss"]) for h in history]


# --------------------------------------------------------------------------- two nodes


@slow
def test_slow_two_nodes_match_one_node(data, tmp_path):
    """2 nodes x 1 process == 1 node x 2 processes (exactly: same shards, same steps), and
    close to 1 process with the doubled batch (as test_train's torchrun test); rank 0 alone
    writes train.log and the checkpoints."""
    torchrun = _torchrun()
    common = ["--set", "num_epochs=2", "--set", "model.dropout=0"]
    port, rdzv = _free_port(), f"test-{os.getpid()}"
    procs = {
        "one": _start([sys.executable, "-m", "wfst_asr.bin.cli",
                       *_cli_args(data, tmp_path / "one", *common, "--set", "max_duration=1.6")]),
        "node0": _start(_node([torchrun], port, rdzv, 60, _cli_args(data, tmp_path / "two",
                                                                    *common))),
        "node1": _start(_node([torchrun], port, rdzv, 60, _cli_args(data, tmp_path / "two",
                                                                    *common))),
        "standalone": _start([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                              "wfst_asr.bin.cli", *_cli_args(data, tmp_path / "local",
                                                             *common)]),
    }
    results = _finish(procs, timeout=240)
    for name, (rc, err) in results.items():
        assert rc == 0, f"{name}: {err[-3000:]}"

    one, two, local = (_losses(tmp_path / d, 2) for d in ("one", "two", "local"))
    assert not (tmp_path / "two" / "epoch-3.pt").exists()
    # the same world size and shards on one node or two: the same numbers
    flat = [x for pair in two for x in pair]
    assert flat == pytest.approx([x for pair in local for x in pair], rel=1e-6), (two, local)
    state = load_checkpoint(tmp_path / "two" / "epoch-2.pt")
    assert state["global_step"] == load_checkpoint(tmp_path / "local" / "epoch-2.pt")[
        "global_step"]
    assert state["sampler"]["world_size"] == 2          # one world across the two nodes
    # one process with the doubled batch: same data and steps, different batch make-up
    for (t1, d1), (t2, d2) in zip(one, two):
        assert abs(t1 - t2) < 0.15 * t1 and abs(d1 - d2) < 0.15 * d1, (one, two)
    assert two[1][0] < two[0][0]

    # rank 0 (on whichever node) wrote the log and the checkpoints, rank 1 nothing
    log = (tmp_path / "two" / "train.log").read_text()
    assert "[rank 0]" in log and "[rank 1]" not in log
    logged = [float(x) for x in re.findall(r"epoch \d+: train loss ([0-9.]+)", log)]
    assert logged == [round(t, 4) for t, _ in two]
    assert (tmp_path / "two" / "averaged.pt").exists()
    assert sorted(p.name for p in (tmp_path / "two").glob("epoch-*.pt")) == [
        "epoch-1.pt", "epoch-2.pt"]


@slow
def test_slow_rendezvous_timeout_is_one_line(data, tmp_path):
    """Only one of the two nodes starts: torchrun and launch.py give up after join_timeout
    (no hang), launch.py with one line naming the endpoint and the timeout; nothing trained."""
    torchrun, join = _torchrun(), 6
    ports = _free_port(), _free_port()
    start = time.monotonic()
    procs = {
        "launch": _start(_node([sys.executable, str(LAUNCH)], ports[0], "lonely", join,
                               _cli_args(data, tmp_path / "exp"))),
        "torchrun": _start(_node([torchrun], ports[1], "lonely", join,
                                 _cli_args(data, tmp_path / "exp"))),
    }
    results = _finish(procs, timeout=join + 60)
    wall = time.monotonic() - start
    assert wall < join + 45, wall
    rc, err = results["launch"]
    assert rc == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == (f"launch.py: error: rendezvous 'lonely' at 127.0.0.1:{ports[0]} timed out "
                    f"after {join} s (join_timeout): fewer than 2 nodes joined; start the "
                    "launcher on every node with the same --rdzv_endpoint and --rdzv_id, or "
                    "raise --rdzv_conf join_timeout=SECONDS"), err[-3000:]
    assert "Traceback" not in err
    rc, err = results["torchrun"]
    assert rc != 0 and "RendezvousTimeoutError" in err, err[-3000:]
    assert not (tmp_path / "exp").exists()


def test_launch_message_for_an_unreachable_endpoint():
    """A node that cannot reach the rendezvous host: one line naming it and read_timeout."""
    sys.path.insert(0, str(SLURM))
    try:
        import launch
    finally:
        sys.path.remove(str(SLURM))
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError
    from torch.distributed.run import parse_args

    args = parse_args(["--nnodes", "1:4", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                       "node7:29400", "--rdzv_id", "42", "--rdzv_conf",
                       "read_timeout=5, join_timeout=9", "train.py"])
    try:
        try:
            raise RuntimeError("The client socket has timed out after 5000ms while trying to "
                               "connect to (node7, 29400).\nframe #0: ...")
        except RuntimeError as inner:
            raise RendezvousConnectionError("The connection to the C10d store has failed.") \
                from inner
    except RendezvousConnectionError as e:
        msg = launch.rendezvous_message(e, args)
    assert msg.endswith(
        "error: rendezvous '42' at node7:29400 could not be reached within 5 s (read_timeout): "
        "The client socket has timed out after 5000ms while trying to connect to (node7, 29400)"
        "; is the node hosting it (the first of the job) up, its port free and open?"), msg
    assert "\n" not in msg
    assert launch.rdzv_conf("read_timeout=5, join_timeout=9") == {"read_timeout": "5",
                                                                   "join_timeout": "9"}


# --------------------------------------------------------------------------- init_distributed


def test_dist_timeout_argument_and_environment(monkeypatch):
    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    assert _dist_timeout(None) is None                   # torch's default
    assert _dist_timeout(7.5) == 7.5
    monkeypatch.setenv(DIST_TIMEOUT_ENV, "12")
    assert _dist_timeout(None) == 12.0
    assert _dist_timeout(3) == 3                         # the argument wins
    for bad in ("soon", "0", "-1", "nan"):
        monkeypatch.setenv(DIST_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=DIST_TIMEOUT_ENV):
            _dist_timeout(None)
    with pytest.raises(ValueError, match="timeout must be positive"):
        _dist_timeout(0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed(timeout=1) == (0, 1)         # one process: no process group
    assert is_bad_input(DistributedInitError("x"))       # the CLI reports it in one line


@slow
def test_slow_process_group_timeout_is_one_line(data, tmp_path):
    """Rank 0 of 2 with nobody coming, rank 1 of 2 with no rank 0 listening: each ends after
    WFST_ASR_DIST_TIMEOUT seconds with one line naming the endpoint (exit code 2)."""
    timeout = 3
    procs = {}
    for rank in (0, 1):
        env = {**_env(), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": "0",
               "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(_free_port()), DIST_TIMEOUT_ENV: str(timeout)}
        procs[rank] = (_start([sys.executable, "-m", "wfst_asr.bin.cli",
                               *_cli_args(data, tmp_path / f"exp{rank}")], env), env)
    start = time.monotonic()
    results = _finish({r: p for r, (p, _) in procs.items()}, timeout=90)
    assert time.monotonic() - start < 60
    for rank, (rc, err) in results.items():
        endpoint = f"127.0.0.1:{procs[rank][1]['MASTER_PORT']}"
        assert rc == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(
            f"wfst-asr train: error: could not start the gloo process group (rank {rank} of 2, "
            f"MASTER_ADDR:MASTER_PORT {endpoint}, waited up to {timeout} s; set "
            f"{DIST_TIMEOUT_ENV} to change): "), last
        assert ("clients joined" if rank == 0 else "timed out") in last, last
        assert "Traceback" not in err
        assert not (tmp_path / f"exp{rank}").exists()   # nothing written before the group


def test_init_error_message_is_one_line(monkeypatch):
    """A multi-line failure of init_process_group becomes one DistributedInitError line."""
    import torch.distributed as dist

    def fail(*args, **kwargs):
        raise dist.DistNetworkError("The client socket has timed out after 2000ms while "
                                    "trying to connect to (h, 1).\nframe #0: c10::Error")

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", fail)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for key, value in {"WORLD_SIZE": "4", "RANK": "3", "MASTER_ADDR": "h",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistributedInitError) as info:
        init_distributed(timeout=2)
    assert error_message(info.value) == (
        f"could not start the gloo process group (rank 3 of 4, MASTER_ADDR:MASTER_PORT h:1, "
        f"waited up to 2 s; set {DIST_TIMEOUT_ENV} to change): The client socket has timed "
        "out after 2000ms while trying to connect to (h, 1).")


# --------------------------------------------------------------------------- SLURM example


def test_sbatch_script_is_valid_and_launches_the_training(data, tmp_path):
    """``bash -n`` accepts the script; run under a fake SLURM (srun and scontrol stubs), the
    command srun gets parses as torchrun's and as ``wfst-asr train`` with the job's values."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not available")
    check = subprocess.run([bash, "-n", str(SBATCH)], check=False, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "srun" in SBATCH.read_text() and "#SBATCH --ntasks-per-node=1" in SBATCH.read_text()

    stubs, argv_file = tmp_path / "bin", tmp_path / "srun_argv"
    stubs.mkdir()
    (stubs / "srun").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {argv_file}\n')
    (stubs / "scontrol").write_text('#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && '
                                    'printf "gpu-a01\\ngpu-a02\\n"\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**_env(), "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_GPUS_ON_NODE": "4",
           "SLURM_CPUS_PER_TASK": "32", "SLURM_SUBMIT_DIR": str(REPO), "CONFIG": "ctc_blstm",
           "EXP_DIR": str(tmp_path / "exp"), "JOIN_TIMEOUT": "300"}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([bash, str(SBATCH), "--set", "lr=5e-4"], check=False, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    argv = argv_file.read_text().splitlines()
    assert argv[:3] == ["--kill-on-bad-exit=1", "python", "examples/slurm/launch.py"], argv
    from torch.distributed.run import parse_args

    args = parse_args(argv[3:])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint,
            args.rdzv_id, args.rdzv_conf, args.module, args.training_script) == (
        "2", "4", "c10d", "gpu-a01:29400", "4242", "join_timeout=300", True, "wfst_asr.bin.cli")
    from wfst_asr.bin.cli import build_parser

    train = build_parser().parse_args(args.training_script_args)
    assert (train.command, train.config, train.exp_dir, train.resume, train.set) == (
        "train", "ctc_blstm", str(tmp_path / "exp"), True, ["lr=5e-4"])
    assert (SLURM / "README.md").exists() and LAUNCH.exists()

    # submitted from elsewhere: one clear line, srun not called
    argv_file.unlink()
    out = subprocess.run([bash, str(SBATCH)], check=False,
                         env={**env, "SLURM_SUBMIT_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and not argv_file.exists()
    assert out.stderr.strip() == (f"train.sbatch: error: examples/slurm/launch.py not found in "
                                  f"{tmp_path}: submit from the repository root"), out.stderr
