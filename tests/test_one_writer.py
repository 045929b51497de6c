"""One writer per store (issue 25, item 4): the store's lock (parts shared, init/finalise/the whole build
exclusive), two prepares at once (the second waits naming the holder, or stops with a message naming it; never a
raw traceback, and the store in place is complete and that of its config), normalise killed while it replaces
the store (the store and the statistics that invert it never part; status reports the leftover, the next run
removes it), and a stage's MLflow run left RUNNING by a killed process marked KILLED when the stage runs again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import pipeline.data.io
from pipeline.config import load_config
from pipeline.data import lock
from pipeline.data.coords import DataError
from pipeline.data.io import open_store
from pipeline.data.lock import StoreBusy, lock_path, store_lock
from pipeline.data.stats import denormalise, read_stats
from pipeline.normalise import finalise_normalise, run_normalise
from pipeline.prepare import run_prepare
from pipeline.tracking import StageRun
from tests.conftest import REPO, wait_for

NO_TRACKING = StageRun(None, None, None)


def _config(tmp: Path, name: str, **data) -> Path:
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp / "results")
    c["tracking"] = {"enabled": False}
    for key, value in data.items():
        c["data"][key] = {**c["data"][key], **value} if isinstance(value, dict) else value
    path = tmp / name
    path.write_text(yaml.safe_dump(c))
    return path


def test_parts_share_the_lock_init_and_finalise_take_it_alone(tmp_path: Path, monkeypatch) -> None:
    """Two open files of one lock stand for two processes (flock locks belong to the open file)."""
    store, host = tmp_path / "data" / "regridded.zarr", socket.gethostname()
    path = lock_path(store)
    part0 = lock._acquire(path, False, "prepare.prepare_part")
    part1 = lock._acquire(path, False, "prepare.prepare_part")  # the parts of one build run at once
    monkeypatch.setenv("PIPELINE_LOCK_TIMEOUT", "0.3")
    t0 = time.monotonic()
    with pytest.raises(StoreBusy) as e:
        lock._acquire(path, True, "prepare.init_prepare")
    assert 0.3 <= time.monotonic() - t0 < 5
    msg = str(e.value)
    assert f"regridded.zarr in {path.parent} is in use by prepare.prepare_part (pid {os.getpid()} on {host}" in msg
    assert (
        "shared lock" in msg and "prepare.init_prepare waited 0 s and stops" in msg and "PIPELINE_LOCK_TIMEOUT" in msg
    )
    assert lock.busy(store).startswith(f"prepare.prepare_part (pid {os.getpid()} on {host}")  # pipeline status
    part0.close()
    part1.close()
    assert lock.busy(store) is None
    init = lock._acquire(path, True, "prepare.init_prepare")
    with pytest.raises(StoreBusy, match=r"in use by prepare.init_prepare \(pid \d+ .*exclusive lock\)"):
        lock._acquire(path, False, "prepare.prepare_part")
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == ["prepare.init_prepare"]
    init.close()
    # within one process the lock is re-entrant: the whole build holds it from init to finalise
    with store_lock(store, exclusive=True, step="run"), store_lock(store, exclusive=False, step="part"):
        assert len(path.read_text().splitlines()) == 1
    assert path.read_text() == ""  # no holder, no record
    monkeypatch.setenv("PIPELINE_LOCK_TIMEOUT", "soon")
    with pytest.raises(DataError, match=r"PIPELINE_LOCK_TIMEOUT = 'soon': expected a number of seconds"):
        lock._acquire(path, True, "x")


# a prepare with its imports done, started when the file ``go`` appears: two of them reach the lock together
DRIVER = """
import sys, time
from pathlib import Path
import pipeline.prepare
from pipeline.cli import main
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
sys.exit(main(["prepare", "--config", sys.argv[3]]))
"""


def _two_prepares(tmp: Path, configs: list[Path], timeout: str) -> list[tuple[int, int, str]]:
    """Run ``prepare`` of each config at once; (pid, exit code, stderr) of each."""
    go = tmp / f"go-{timeout}"
    env = {**os.environ, "PIPELINE_LOCK_TIMEOUT": timeout}
    procs = []
    for k, cfg in enumerate(configs):
        args = [sys.executable, "-c", DRIVER, str(tmp / f"ready-{timeout}-{k}"), str(go), str(cfg)]
        procs.append(subprocess.Popen(args, cwd=tmp, env=env, stderr=subprocess.PIPE, text=True))
    wait_for(lambda: all((tmp / f"ready-{timeout}-{k}").exists() for k in range(len(configs))), 120, "the drivers")
    go.touch()
    return [(p.pid, p.wait(timeout=300), p.stderr.read()) for p in procs]


def _store_of(cfg_path: Path) -> None:
    """The regridded store in place is complete and built from ``cfg_path``'s settings."""
    cfg = load_config([cfg_path])
    ds = open_store(cfg.regridded_path)
    assert ds.attrs["data_config_hash"] == cfg.data.content_hash()
    assert float(ds["latitude"][1] - ds["latitude"][0]) == cfg.data.grid.resolution
    assert ds.sizes["time"] == 65 and np.isfinite(ds["z500"].values).all()


@pytest.mark.slow
def test_two_prepares_at_once_one_store_of_its_config(tmp_path: Path) -> None:
    """Two resolutions of one experiment at once. Without waiting, the second stops with a message naming the
    first (exit 2, no traceback) and the store is the first's; with waiting, it logs whom it waits for, then
    builds its own: both exit 0 and the store in place is the last one's."""
    configs = [_config(tmp_path, "five.yaml"), _config(tmp_path, "ten.yaml", grid={"resolution": 10.0})]
    host = socket.gethostname()
    ran = _two_prepares(tmp_path, configs, "0")
    assert sorted(rc for _, rc, _ in ran) == [0, 2], [err[-3000:] for *_, err in ran]
    (winner, _, _), (_, _, err) = sorted(ran, key=lambda r: r[1])
    assert "Traceback" not in err, err
    assert f"error: regridded.zarr in {tmp_path / 'results' / 'eofs-z500' / 'data'} is in use by " in err, err
    assert f"prepare.run_prepare (pid {winner} on {host}, since " in err, err
    _store_of(configs[[pid for pid, _, _ in ran].index(winner)])

    ran = _two_prepares(tmp_path, configs, "120")
    assert [rc for _, rc, _ in ran] == [0, 0], [err[-3000:] for *_, err in ran]
    waited = [k for k, (_, _, err) in enumerate(ran) if "waits up to 120 s" in err]
    assert len(waited) == 1, [err[-3000:] for *_, err in ran]
    first = ran[1 - waited[0]][0]
    assert f"in use by prepare.run_prepare (pid {first} on {host}" in ran[waited[0]][2]
    assert "Traceback" not in ran[0][2] + ran[1][2]
    _store_of(configs[waited[0]])


class Killed(BaseException):
    """A kill -9 in the middle of a function, as far as the files are concerned."""


def _kill_after(renames: int, monkeypatch) -> None:
    """Let move_into_place (the store's replacement: the old store aside, the new one in, the old one removed) do
    ``renames`` renames, then die."""
    done = []
    rename = Path.rename

    def counted(self: Path, target):
        if len(done) == renames:
            raise Killed
        done.append(self)
        return rename(self, target)

    def die(*args, **kwargs):
        raise Killed

    def move(src: Path, final: Path) -> None:
        with monkeypatch.context() as m:
            m.setattr(Path, "rename", counted)
            m.setattr(shutil, "rmtree", die)
            pipeline.data.io.move_into_place(src, final)

    monkeypatch.setattr("pipeline.data.parts.move_into_place", move)


def _pair_is_consistent(cfg) -> dict:
    """The normalised store in place, denormalised with the statistics readers read, is the regridded store."""
    stats = read_stats(cfg.stats_path)
    back = denormalise(open_store(cfg.normalised_path), stats)
    np.testing.assert_allclose(back["z500"].values, open_store(cfg.regridded_path)["z500"].values, rtol=1e-6)
    return stats


def _normalise_state(cfg) -> tuple[str, str]:
    from pipeline.status import experiment_status

    s = next(s for s in experiment_status(cfg) if s.stage == "normalise")
    return s.state, s.detail


def test_normalise_killed_while_replacing_its_store_never_leaves_a_mismatched_pair(tmp_path: Path, monkeypatch) -> None:
    old = load_config([_config(tmp_path, "old.yaml")])
    split = {
        "train": ["1948-01-01", "1969-12-31"],
        "val": ["1970-01-01", "1991-12-31"],
        "test": ["1992-01-01", "2012-12-31"],
    }
    new = load_config([_config(tmp_path, "new.yaml", split=split)])
    run_prepare(old, NO_TRACKING)
    run_normalise(old, NO_TRACKING)
    before = _pair_is_consistent(old)
    assert old.stats_path.is_symlink() and (old.normalised_path / "stats.json").is_file()

    # killed between moving the old store aside and moving the new one in (the new split's statistics differ)
    _kill_after(1, monkeypatch)
    with pytest.raises(Killed):
        run_normalise(new, NO_TRACKING)
    assert not new.normalised_path.exists()
    with pytest.raises(DataError, match="does not exist"):  # no store, no statistics: nothing to mismatch
        read_stats(new.stats_path)
    state, detail = _normalise_state(new)
    assert state == "stopped" and ".normalised.zarr.old-" in detail and "rerun the stage" in detail, detail
    monkeypatch.undo()
    finalise_normalise(new, NO_TRACKING)  # the build is complete: finalise alone finishes it
    after = _pair_is_consistent(new)
    assert after["z500"]["mean"] != before["z500"]["mean"]
    assert lock.leftovers(new.normalised_path) == [], list(new.data_dir.iterdir())
    assert _normalise_state(new)[0] == "done"

    # killed after the new store moved in, before the old one was removed: the new pair, the old store left aside
    _kill_after(2, monkeypatch)
    with pytest.raises(Killed):
        run_normalise(old, NO_TRACKING)
    assert _pair_is_consistent(old) == before
    state, detail = _normalise_state(old)
    assert state == "stopped" and ".normalised.zarr.old-" in detail, detail
    monkeypatch.undo()
    run_normalise(new, NO_TRACKING)  # the next run removes what the killed one left
    assert _pair_is_consistent(new) == after
    assert lock.leftovers(new.normalised_path) == [] and _normalise_state(new)[0] == "done"


KILLED_STAGE = """
import os, signal, sys
from pathlib import Path
from pipeline.tracking import RunTarget, stage_run
with stage_run(RunTarget(sys.argv[1], "exp", Path(sys.argv[2]), mode="online"), "prepare") as run:
    print(run.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_left_running_by_a_killed_stage_is_marked_killed_when_it_runs_again(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import RunTarget, stage_run

    uri, exp_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "exp"
    r = subprocess.run([sys.executable, "-c", KILLED_STAGE, uri, str(exp_dir)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    killed = r.stdout.strip()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(killed).info.status == "RUNNING"  # what every stage but train and distill left forever

    target = RunTarget(uri, "exp", exp_dir, mode="online")
    with stage_run(target, "prepare") as rerun:
        with stage_run(target, "prepare") as beside:  # the same stage at once in a live process: not touched
            pass
        with stage_run(target, "normalise") as other:  # another stage: not touched
            pass
        assert client.get_run(rerun.run_id).info.status == "RUNNING"
    run = client.get_run(killed)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert run.data.tags["pipeline.killed_by"] == rerun.run_id
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("Regridding") and "Killed: its process (pid " in note and rerun.run_id in note
    for r in (rerun, beside, other):
        assert client.get_run(r.run_id).info.status == "FINISHED"
    assert (exp_dir / ".runs" / "prepare--prepare.json").read_text() == ""  # closed: nothing left to mark
