"""Boundary fields (issue 29): a variable given at every frame and never generated (sea-surface temperature
prescribed as in an AMIP run), through prepare, normalise, the clips, training and sampling under a scenario, on
the two real HadCM3 runs (iris-sample-data), each run's boundary field its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.config import load_config
from pipeline.data.clips import ClipDataset
from pipeline.data.conditions import BoundaryFields, conditioner, land_fraction
from pipeline.data.coords import DataError
from pipeline.data.io import open_store, resolve_paths
from pipeline.sample import load_inference
from tests.conftest import hadcm3_runs_config, pipeline_cli

pytestmark = pytest.mark.slow


def _with_sst(run: str, out: Path) -> Path:
    """The real file of ``run`` with a made-up sea-surface temperature beside its air temperature: an affine map of
    it over the sea, NaN over land (GSHHS land fraction above one half), in the file's own encoding."""
    src = resolve_paths([f"bundled:iris_sample_data/{run}_north_america.nc"])[0]
    ds = xr.open_dataset(src, decode_times=False)
    tas = ds["air_temperature"]
    step = float(np.diff(ds["latitude"].values).mean())
    land = land_fraction(ds["latitude"].values, ds["longitude"].values, step) > 0.5
    sst = (0.8 * (tas - 273.15) + 275.0).where(~land[None])
    sst.attrs = {"standard_name": "sea_surface_temperature", "units": "K", "grid_mapping": "latitude_longitude"}
    ds["sst"] = sst.astype(np.float32)
    ds.to_netcdf(out)
    return out


@pytest.fixture(scope="module")
def boundary_store(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("boundary")
    files = {r: str(_with_sst(r, tmp / f"{r}.nc")) for r in ("A1B", "E1")}
    variables = [{"name": "air_temperature"}, {"name": "sst", "boundary": True}]
    c = hadcm3_runs_config(tmp, "boundary", files, variables)
    c["launch"] = {"executor": "local"}
    c["model"] = {"base_channels": 8}
    c["train"] = {"steps": 4, "checkpoint_every": 4, "val_every": 4, "log_every": 2, "micro_batch": 2,
                  "clip_frames": 8}  # fmt: skip
    c["sample"] = {"checkpoint": "step-00000004", "guidance_weight": 1.0, "steps": 2, "unconditional": 1,
                   "rollouts": 1, "rollout_frames": 10}  # fmt: skip
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(c))
    for stage in ("prepare", "normalise"):
        r = pipeline_cli(stage, "--config", str(cfg), cwd=tmp, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    return tmp, cfg


def test_the_clips_give_the_boundary_field_and_sampling_reads_the_scenarios_run(boundary_store) -> None:
    """The store names the boundary field; the clips generate only the other variables and give the boundary
    field of their own frames (land 0); read for a rollout's dates it is the run's own (A1B's differs from E1's
    after 2000), and dates that run does not hold are an error."""
    tmp, cfg_path = boundary_store
    cfg = load_config([cfg_path])
    norm = open_store(tmp / cfg.normalised_path)
    assert norm.attrs["boundary_fields"] == ["sst"]
    stats = json.loads((tmp / cfg.stats_path).read_text())
    assert "sst" in json.dumps(stats)  # normalised by its training-period statistics, like every variable
    sst = norm["sst"].values
    assert np.isnan(sst).any() and np.isfinite(sst).any()  # land and sea
    clips = ClipDataset(tmp / cfg.normalised_path, "train", 8)
    assert clips.variables == ["air_temperature"] and clips.boundary_names == ["sst"]
    item = clips[5]
    start = int(item["start"])
    assert tuple(item["boundary"].shape) == (1, 8, *sst.shape[1:]) and item["x"].shape[0] == 1
    np.testing.assert_array_equal(item["boundary"][0].numpy(), np.nan_to_num(sst[start : start + 8]))
    with pytest.raises(DataError, match="boundary fields"):
        ClipDataset(tmp / cfg.normalised_path, "train", 8, variables=["air_temperature", "sst"])

    run, times = norm["run"].values, norm["time"].values
    e1_test = np.flatnonzero((run == 1) & (norm["split"].values == 3))[:6]
    dates = times[e1_test]
    e1, a1b = BoundaryFields(norm, ["sst"], "E1"), BoundaryFields(norm, ["sst"], "A1B")
    np.testing.assert_array_equal(e1(dates)[0], np.nan_to_num(sst[e1_test]))
    a1b_steps = np.flatnonzero(run == 0)[np.searchsorted(times[run == 0], dates)]
    np.testing.assert_array_equal(a1b(dates)[0], np.nan_to_num(sst[a1b_steps]))
    assert np.abs(a1b(dates) - e1(dates)).max() > 0.1  # the scenarios' oceans differ by then
    past = np.array([d.replace(year=d.year + 40) for d in dates])  # 2100 onwards
    with pytest.raises(
        DataError, match=r"run 'E1' holds them from 1860.* to 2099.* asks for 6 frame.*sample\.rollout_frames"
    ):
        e1(past)
    with pytest.raises(DataError, match="several runs over the same dates"):
        BoundaryFields(norm, ["sst"], None)
    # sampling under a scenario that no run of the store has: no ocean to read, said with the key that settles it
    reads = {"forcings": 1, "boundary_channels": 1}
    with pytest.raises(DataError, match=r"no run of the store \(data.runs\) is driven by it: set sample.scenario"):
        conditioner(
            reads, norm, tmp / cfg.stats_path, cfg.data.forcings, {"co2": "A2"}, cfg.data.run_of_scenario({"co2": "A2"})
        )
    with pytest.raises(DataError, match="the network reads 0 boundary fields, the store has \\['sst'\\]"):
        conditioner({"forcings": 1}, norm, tmp / cfg.stats_path, cfg.data.forcings, {"co2": "E1"}, "E1")


def test_a_model_given_the_boundary_field_trains_and_samples_under_each_runs_ocean(boundary_store) -> None:
    """Trained a few steps, the network reads the boundary field (its inference file says so); sampled with the
    same seeds under E1 (the test run) and under A1B (sample.scenario: that run's forcing and ocean), the rollouts
    differ and hold only the generated variable (a rollout longer than the run's data is refused: the test
    above)."""
    tmp, cfg_path = boundary_store
    r = pipeline_cli("train", "--config", str(cfg_path), cwd=tmp, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = load_config([cfg_path])
    _, meta = load_inference(tmp / cfg.inference_file("step-00000004"), "cpu")
    assert meta.model_config["boundary_channels"] == 1 and list(meta.variables) == ["air_temperature"]
    rollouts = {}
    for name, scenario in (("E1", {}), ("A1B", {"co2": "A1B"})):
        sc = tmp / "scenario.yaml"
        sc.write_text(yaml.safe_dump({"sample": {"scenario": scenario}}))
        r = pipeline_cli("sample", "--config", str(cfg_path), "--config", str(sc), cwd=tmp)
        assert r.returncode == 0, r.stderr[-3000:]
        ds = open_store(tmp / cfg.samples_dir / "rollouts.zarr")
        assert "sst" not in ds.data_vars and json.loads(ds.attrs["forcing_scenario"]) == {"co2": name}
        rollouts[name] = ds["air_temperature"].values
    assert np.abs(rollouts["E1"] - rollouts["A1B"]).max() > 0
