"""The simulated experiment's data (pipeline.data.simulated, config/experiments/qg-turbulence.yaml).

Needs the optional group ``simulated`` (pyqg-jax), which the test extras install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipeline.config import load_config
from pipeline.data.coords import DataError
from pipeline.data.io import open_source, resolve_paths
from pipeline.data.simulated import SIMULATIONS, generate
from pipeline.prepare import check_data

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = REPO / "config" / "experiments" / "qg-turbulence.yaml"
SHORT = {"spinup_days": 20, "frames": 6, "nx": 32}


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full data set, made once into a temporary cache (about 30 s on a CPU)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PIPELINE_DATA_CACHE", str(tmp_path_factory.mktemp("simcache")))
    try:
        (path,) = resolve_paths(["simulated:qg-turbulence"])
        yield path
    finally:
        mp.undo()


def test_same_seed_same_field_other_seed_other_field() -> None:
    a, b = generate(overrides=SHORT), generate(overrides=SHORT)
    np.testing.assert_array_equal(a["q"].values, b["q"].values)
    assert float(np.abs(a["q"].values).max()) > 0
    c = generate(overrides={**SHORT, "seed": 1})
    assert not np.array_equal(a["q"].values, c["q"].values)


def test_unknown_names_and_parameters_are_refused() -> None:
    with pytest.raises(DataError, match="unknown simulated data set"):
        resolve_paths(["simulated:nope"])
    with pytest.raises(DataError, match="unknown parameters"):
        generate(overrides={"nonsense": 1})


@pytest.mark.slow
def test_file_is_cf_and_cached_once(cached: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = cached.stat().st_mtime_ns
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(cached.parent))
    assert resolve_paths(["simulated:qg-turbulence"]) == [cached]
    assert cached.stat().st_mtime_ns == mtime  # not made again
    with xr.open_dataset(cached, decode_times=False) as raw:
        assert raw.attrs["Conventions"] == "CF-1.8"
        assert raw.attrs["source"].startswith("simulated by pyqg-jax ")
        assert "SIMULATED" in raw.attrs["title"]
        assert raw["time"].attrs["units"] == "days since 2000-01-01 00:00:00"
        assert raw["time"].attrs["calendar"] == "proleptic_gregorian"
        assert raw["latitude"].attrs["standard_name"] == "latitude"
        assert raw["latitude"].attrs["units"] == "degrees_north"
        assert raw["longitude"].attrs["standard_name"] == "longitude"
        assert raw["longitude"].attrs["units"] == "degrees_east"
        assert raw["q"].attrs["units"]
        assert raw.sizes == {"time": SIMULATIONS["qg-turbulence"]["frames"], "latitude": 64, "longitude": 64}
    ds = open_source([cached])
    assert np.all(np.diff(ds["time"].values) == np.timedelta64(2, "D"))
    assert np.isfinite(ds["q"].values).all()


@pytest.mark.slow
def test_field_has_usable_day_to_day_dynamics(cached: Path) -> None:
    """Frame-to-frame autocorrelation well below 1 (not frozen) and well above 0 (not noise)."""
    q = open_source([cached])["q"].values.astype(np.float64)
    a = q - q.mean(axis=0)
    for lag, lo, hi in [(1, 0.3, 0.99), (2, 0.2, 0.9)]:
        r = float((a[lag:] * a[:-lag]).sum() / np.sqrt((a[lag:] ** 2).sum() * (a[:-lag] ** 2).sum()))
        assert lo < r < hi, f"lag {lag} frames: autocorrelation {r:.3f} outside ({lo}, {hi})"
    half = len(q) // 2
    assert 0.8 < q[:half].std() / q[half:].std() < 1.25  # spun up: statistically steady


@pytest.mark.slow
def test_prepare_accepts_the_experiment(cached: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(cached.parent))
    cfg = load_config([REPO / "config" / "config.yaml", EXPERIMENT, {"results_dir": str(tmp_path)}])
    assert cfg.experiment == "qg-turbulence"
    ds, paths, target = check_data(cfg)
    assert paths == [cached]
    assert "q" in ds.data_vars
    assert (target.sizes["latitude"], target.sizes["longitude"]) == (32, 32)
