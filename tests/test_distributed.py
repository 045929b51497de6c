"""pipeline.distributed: the one place a stage joins its job's process group (training, distillation, sampling)."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest
import torch

from pipeline import distributed
from tests.conftest import free_port


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _rank(rank: int, world: int, port: int, group: str, out: Any) -> None:
    os.environ.update(_env(rank, world, port))
    import torch.distributed as dist

    rt = distributed.init_runtime(gpus=True, precision="auto", group=group)  # type: ignore[arg-type]
    again = distributed.init_runtime(gpus=True, precision="auto", group=group)  # type: ignore[arg-type]
    total = torch.tensor([rt.rank + 1.0])
    if dist.is_initialized():
        dist.all_reduce(total)
        backend = dist.get_backend()
    else:
        backend = None
    distributed.leave_group()
    out.put((rt, again, float(total), backend, dist.is_initialized()))


def _run(world: int, group: str) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, group, out)) for r in range(world)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return sorted(results, key=lambda r: r[0].rank)


@pytest.mark.slow
def test_two_processes_join_one_gloo_group_on_the_cpu() -> None:
    results = _run(2, "multi")
    assert [r[0].rank for r in results] == [0, 1]
    for rt, again, total, backend, left in results:
        assert rt == again  # a second call reuses the group
        assert rt.world == 2 and total == 3.0 and backend == "gloo" and not left
        assert rt.device == torch.device("cpu") and not rt.cuda
        assert not rt.bf16 and rt.dtype == torch.float32  # auto: fp32 on the CPU


@pytest.mark.parametrize(("group", "joined"), [("multi", False), ("always", True)])
def test_one_process_makes_a_group_only_when_asked(group: str, joined: bool) -> None:
    ((rt, _, total, backend, _),) = _run(1, group)
    assert (rt.rank, rt.world, total) == (0, 1, 1.0)
    assert (backend == "gloo") is joined


def test_precision_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.Runtime(0, 1, torch.device("cpu"), False, True).dtype == torch.bfloat16
    monkeypatch.setenv("WORLD_SIZE", "1")
    rt = distributed.init_runtime(gpus=False, precision="bf16", group="multi")
    assert rt.bf16 and rt.device == torch.device("cpu")


def test_each_task_gets_its_share_of_the_cpus(monkeypatch) -> None:
    """Tasks of a node share the CPUs instead of each starting one thread per core (2 tasks on 2 cores ran 4
    threads); under SLURM a task gets its cpus_per_task, never more than it can run on."""
    from pipeline.launch import cpu_threads

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    assert [cpu_threads(n) for n in (1, 2, 4, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cpu_threads(4) == 3  # SLURM allocated 3 per task (the node's cgroup holds 4 x 3)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "16")
    assert cpu_threads(1) == 8  # asked for more than the task may use
