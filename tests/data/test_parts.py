"""prepare and normalise in data.parts parts: the same stores and statistics as one part, bit for bit.

Each part opens only the source files of its time range, a killed part (chunks written, no marker) is
run again and leaves no trace, a completed part is never redone (Snakemake's dry run lists only the
missing one), and finalise refuses a build with a part missing.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from pipeline.config import Config, ConfigError, load_config
from pipeline.data.coords import DataError
from pipeline.data.io import TimeGrid, open_store
from pipeline.data.parts import Build, finalise_store, part_ranges
from pipeline.data.regrid import regrid, target_grid
from pipeline.data.stats import compute_stats, split_periods
from pipeline.normalise import run_normalise
from pipeline.prepare import check_data, finalise_prepare, init_prepare, open_selected, prepare_part, run_prepare
from pipeline.tracking import StageRun
from tests.conftest import REPO, analytic, assert_same_data

NO_TRACKING = StageRun(None, None, None)


def test_part_ranges_are_whole_chunks() -> None:
    assert part_ranges(65, 8, 1) == [(0, 65)]
    assert part_ranges(65, 8, 2) == [(0, 32), (32, 65)]  # 9 chunks: 4 + 5
    assert part_ranges(65, 8, 9) == [(8 * k, min(65, 8 * k + 8)) for k in range(9)]
    for n, c, p in ((1000, 24, 7), (365, 8, 3), (17, 5, 4)):
        r = part_ranges(n, c, p)
        assert r[0][0] == 0 and r[-1][1] == n and all(b == a2 for (_, b), (a2, _) in itertools.pairwise(r))
        assert all(a % c == 0 and b > a for a, b in r)
    with pytest.raises(DataError, match=r"data.parts = 10 is more than the data's 9 time chunks \(65 steps"):
        part_ranges(65, 8, 10)


def test_files_are_read_in_the_store_chunks() -> None:
    """A file's dask chunks follow the store's chunks of the whole time axis (cut where the file begins)."""
    grid = TimeGrid(np.arange(20) * 3600.0, 8)
    assert grid.chunks_from(0.0, 20) == (8, 8, 4)
    assert grid.chunks_from(5 * 3600.0, 10) == (3, 7)  # steps 5-7, 8-14
    assert grid.chunks_from(16 * 3600.0, 4) == (4,)
    assert grid.chunks_from(2 * 3600.0, 17) == (6, 8, 3)


def test_parts_setting_is_checked() -> None:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    base["data"]["parts"] = 0
    with pytest.raises(ConfigError, match=r"data\.parts = 0: must be >= 1"):
        load_config(base)
    base["data"]["parts"] = 10  # the bundled data has 65 winters: 9 chunks of 8
    with pytest.raises(ConfigError, match=r"data.parts: data.parts = 10 is more than the data's 9 time chunks"):
        check_data(load_config(base))


# --- twelve monthly files, three parts -------------------------------------------------------------------

LAT = np.arange(-88.5, 90, 3.0)
LON = np.arange(0, 360, 3.0)


def _monthly_files(folder: Path) -> list[Path]:
    """A 360_day year of daily 3-degree fields as one file per month (tas, and pr with a NaN patch)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = analytic(LAT, LON)
    paths = []
    for month in range(12):
        days = np.arange(30 * month, 30 * month + 30)
        tas = 280 + 10 * base[None] + rng.standard_normal((30, LAT.size, LON.size))
        pr = np.exp(base)[None] * (1 + 0.1 * rng.random((30, LAT.size, LON.size)))
        pr[1, 20:26, 10:20] = np.nan  # a step a month with missing cells (the regridder's NaN-aware branch)
        ds = xr.Dataset(
            {
                "tas": (("time", "lat", "lon"), tas.astype("float32"), {"units": "K"}),
                "pr": (("time", "lat", "lon"), pr.astype("float32"), {"units": "kg m-2 s-1"}),
            },
            coords={
                "time": ("time", days, {"units": "days since 2000-01-01", "calendar": "360_day"}),
                "lat": ("lat", LAT, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", LON, {"standard_name": "longitude", "units": "degrees_east"}),
            },
        )
        paths.append(folder / f"pr_tas_2000{month + 1:02d}.nc")
        ds.to_netcdf(paths[-1])
    return paths


def _monthly_config(tmp_path: Path, parts: int) -> Config:
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["experiment"] = "monthly"
    c["results_dir"] = str(tmp_path / f"results-{parts}")
    c["tracking"] = {"enabled": False}
    c["data"] = {
        "source": {"paths": [str(tmp_path / "src" / "pr_tas_*.nc")]},
        "variables": [{"name": "tas", "regrid": "bilinear"}, {"name": "pr", "regrid": "conservative"}],
        "grid": {"resolution": 5.0},
        # the training period ends inside a chunk (step 164 of chunk 160-167): its moments are computed again
        "split": {
            "train": ["2000-01-01", "2000-06-15"],
            "val": ["2000-06-16", "2000-09-30"],
            "test": ["2000-10-01", "2000-12-30"],
        },
        "time_chunk": 8,  # 45 chunks, 15 a part (4 months); a chunk spans two files every 30 days
        "parts": parts,
    }
    return load_config(c)


def test_monthly_files_in_three_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part opens only its months; a killed part is rerun; 3 parts give the one-part stores and statistics."""
    files = _monthly_files(tmp_path / "src")
    one, three = _monthly_config(tmp_path, 1), _monthly_config(tmp_path, 3)
    run_prepare(one, NO_TRACKING)
    run_normalise(one, NO_TRACKING)

    init_prepare(three)
    opened: list[str] = []
    open_dataset = xr.open_dataset

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return open_dataset(path, *args, **kwargs)

    monkeypatch.setattr(xr, "open_dataset", spy)
    for part in range(3):
        opened.clear()
        prepare_part(three, part)
        assert sorted(opened) == [f.name for f in files[4 * part : 4 * part + 4]], part
    monkeypatch.undo()

    # part 1 killed after writing some chunks: garbage in its region, no marker
    build = Build(three.regridded_path)
    build.marker(1).unlink()
    zarr.open_array(build.store / "tas", mode="r+", zarr_format=3)[120:144] = -1.0
    with pytest.raises(DataError, match=r"part\(s\) \[1\] of 3 have not completed"):
        finalise_store(build)
    assert not three.regridded_path.exists()  # nothing that looks complete
    prepare_part(three, 1)
    finalise_prepare(three, NO_TRACKING)
    run_normalise(three, NO_TRACKING)
    assert_same_data(one.data_dir, three.data_dir)

    # the values are those of regridding the whole year at once; the statistics those of one pass over the store
    ds, _ = open_selected(one)
    target = target_grid(5.0)
    direct = regrid(ds.chunk({"time": 8}), target, {"tas": "bilinear", "pr": "conservative"}).compute()
    store = open_store(three.regridded_path)
    for v in ("tas", "pr"):
        assert np.array_equal(store[v].values, direct[v].values, equal_nan=True), v
    assert np.isnan(store["pr"].values).any()
    periods = {k: getattr(three.data.split, k) for k in ("train", "val", "test")}
    expected = compute_stats(split_periods(store, periods)["train"])
    assert json.loads(three.stats_path.read_text())["variables"] == expected
    marker = json.loads(build.marker(2).read_text())
    assert marker["files"] == [f.name for f in files[8:]] and len(marker["moments"]["pr"]) == 15


# --- Snakemake: the bundled data in two parts --------------------------------------------------------------


def _jobs(out: str) -> list[tuple[str, str | None]]:
    """(rule, part wildcard) of every job in a Snakemake dry run's output."""
    jobs = []
    for block in re.split(r"\n(?=rule |localrule )", out)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block)[1]
        part = re.search(r"wildcards: part=(\d+)", block)
        jobs.append((rule, part[1] if part else None))
    return jobs


@pytest.mark.workflow
def test_snakemake_two_parts_rerun_a_killed_part_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snakemake = shutil.which("snakemake")
    assert snakemake is not None, "snakemake is a dependency of the project"
    work, ref = tmp_path / "work", tmp_path / "ref"
    work.mkdir()
    for name in ("Snakefile", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    (work / "parts.yaml").write_text(yaml.safe_dump({"tracking": {"enabled": False}, "data": {"parts": 2}}))
    exp = "results/eofs-z500/data"

    def smk(*args: str) -> str:
        r = subprocess.run(
            [snakemake, *args, "--cores", "2", "--configfile", "parts.yaml"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout + r.stderr

    smk(f"{exp}/regridded.parts/part-0000.done")  # init and part 0; part 1 then dies midway:
    zarr.open_array(work / exp / "regridded.parts/store.zarr/z500", mode="r+", zarr_format=3)[32:48] = 0.0
    jobs = _jobs(smk("-n", f"{exp}/stats.json"))
    assert [j for j in jobs if j[0] in ("init_store", "regrid_part")] == [("regrid_part", "0001")], jobs
    assert sorted(j for j in jobs if j[0] == "normalise_part") == [
        ("normalise_part", "0000"),
        ("normalise_part", "0001"),
    ]
    smk(f"{exp}/stats.json")

    # the same data settings in one part, in this process, as `python -m pipeline prepare` / `normalise` do
    ref.mkdir()
    monkeypatch.chdir(ref)
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = load_config(c | {"tracking": {"enabled": False}})
    assert cfg.data.parts == 1
    run_prepare(cfg, NO_TRACKING)
    run_normalise(cfg, NO_TRACKING)
    assert_same_data(ref / exp, work / exp)
    assert json.loads((work / exp / "regridded.parts/part-0001.done").read_text())["start"] == 32
