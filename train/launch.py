"""Start the training ranks: locally through torch's elastic agent (torchrun), on several machines via DeepSpeed.

On a machine without a GPU every rank gets DeepSpeed's CPU accelerator.

A `program` is what follows `python` for one rank: `["script.py", "arg", …]` or `["-m", "package.module", "arg", …]`.
Locally the rendezvous store listens on 127.0.0.1 only: torchrun's own static rendezvous binds its TCPStore to every
interface whatever `--master-addr` says, so `LoopbackRendezvous` hands the store a socket already bound to loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousInfo, RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import handler_registry
from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

LOOPBACK_BACKEND = "tinymix-loopback"


class LoopbackRendezvous(StaticTCPRendezvous):
    """torchrun's static single-node rendezvous, with the agent's store on a kernel-chosen 127.0.0.1 port."""

    def get_backend(self) -> str:
        return LOOPBACK_BACKEND

    def next_rendezvous(self) -> RendezvousInfo:
        if self._store is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            self.master_addr, self.master_port = "127.0.0.1", int(sock.getsockname()[1])
            self._store = TCPStore(
                self.master_addr,
                self.master_port,
                self.world_size,
                True,
                self.timeout,
                multi_tenant=True,
                master_listen_fd=sock.detach(),
            )
        return super().next_rendezvous()


def loopback_interface() -> str | None:
    """The loopback network interface's name (`lo` on Linux, `lo0` on macOS), for gloo to bind to."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n.startswith("lo")), None)


def _loopback_handler(params: RendezvousParameters) -> RendezvousHandler:
    return LoopbackRendezvous("127.0.0.1", 0, 0, 1, params.run_id, int(params.config.get("timeout", 600)))


def _register() -> None:
    with contextlib.suppress(ValueError):  # already registered in this process
        handler_registry.register(LOOPBACK_BACKEND, _loopback_handler)


def rank_env(nproc: int, base: Mapping[str, str] | None = None, gpu: bool | None = None) -> dict[str, str]:
    """Environment for local ranks: CPU accelerator without a GPU, cores split between ranks, gloo on loopback."""
    env = dict(os.environ if base is None else base)
    gpu = torch.cuda.is_available() if gpu is None else gpu
    if not gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    lo = loopback_interface()
    if lo:
        env.setdefault("GLOO_SOCKET_IFNAME", lo)
    return env


def torchrun_args(program: Sequence[str], nproc: int, run_id: str | None = None) -> list[str]:
    """`torch.distributed.run` arguments starting `nproc` ranks of `program` on this machine."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1 (got {nproc})")
    if not program:
        raise ValueError("launch: no program to run")
    head = ["--module"] if program[0] == "-m" else []
    rest = list(program[1:]) if head else list(program)
    return [
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        f"--rdzv-backend={LOOPBACK_BACKEND}",
        "--rdzv-endpoint=127.0.0.1:0",
        f"--rdzv-id={run_id or uuid.uuid4().hex}",
        "--max-restarts=0",
        *head,
        *rest,
    ]


def deepspeed_command(program: Sequence[str], hostfile: str, master_port: int = 29500) -> list[str]:
    """DeepSpeed's multi-node launcher (`deepspeed --hostfile F`); ranks read LOCAL_RANK from the environment."""
    if not os.path.isfile(hostfile):
        raise ValueError(f"--hostfile: no such file {hostfile}")
    head = ["--module"] if program and program[0] == "-m" else []
    rest = list(program[1:]) if head else list(program)
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--hostfile",
        hostfile,
        "--master_port",
        str(master_port),
        "--no_local_rank",
        *head,
        *rest,
    ]


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def launch_local(program: Sequence[str], nproc: int) -> int:
    """Run `nproc` ranks of `program` here (torch's elastic agent, as torchrun does); 0 when every rank succeeded."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    _register()
    with _environ(rank_env(nproc)):
        try:
            run(parse_args(torchrun_args(program, nproc)))
        except ChildFailedError as e:
            print(f"launch: {e}", file=sys.stderr)
            return 1
    return 0


def launch(program: Sequence[str], *, nproc: int = 1, hostfile: str | None = None) -> int:
    """Start the ranks of `program`: with a hostfile through DeepSpeed's launcher, else `nproc` local ranks."""
    if hostfile is None:
        return launch_local(program, nproc)
    return subprocess.run(deepspeed_command(program, hostfile), env=rank_env(nproc), check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m train.launch [--nproc N] [--hostfile F] -- PROGRAM …`."""
    parser = argparse.ArgumentParser(prog="python -m train.launch", description=__doc__)
    parser.add_argument("--nproc", type=int, default=1, help="Ranks on this machine.")
    parser.add_argument("--hostfile", default=None, help="DeepSpeed hostfile: run on several machines.")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="Script and its arguments, or -m module ….")
    args = parser.parse_args(argv)
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    return launch(program, nproc=args.nproc, hostfile=args.hostfile)


if __name__ == "__main__":
    sys.exit(main())
