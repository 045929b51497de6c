"""ClipDataset: every clip is the store's frames, across chunk boundaries, whatever the cache holds."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from pipeline.data.clips import ClipDataset
from pipeline.data.coords import DataError
from pipeline.data.io import write_zarr


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, xr.Dataset]:
    rng = np.random.default_rng(0)
    n = 23
    a = rng.standard_normal((n, 3, 5)).astype(np.float32)
    b = rng.standard_normal((n, 3, 5)).astype(np.float32)
    b[:, 1, 2] = np.nan  # a masked cell (land in an ocean field)
    b[7, 0, 0] = np.nan  # and one missing value
    ds = xr.Dataset(
        {"b": (("time", "latitude", "longitude"), b), "a": (("time", "latitude", "longitude"), a)},
        coords={
            "time": pd.date_range("2000-01-01", periods=n, freq="D"),
            "latitude": [0.0, 10.0, 20.0],
            "longitude": np.arange(5) * 10.0,
            "split": ("time", [1] * 15 + [2] * 8),
        },
    )
    path = tmp_path / "n.zarr"
    write_zarr(ds, path, time_chunk=4)
    return path, ds


@pytest.mark.parametrize("cache", [1, 8])
def test_every_clip_is_the_stores_frames_with_its_mask(store, cache: int) -> None:
    path, ds = store
    clips = ClipDataset(path, "train", frames=6, cache_chunks=cache)
    assert clips.variables == ["a", "b"] and len(clips) == 15 - 6 + 1
    truth = np.stack([ds["a"].values, ds["b"].values])  # (C, time, H, W)
    for i in [*range(len(clips)), 3, 0, 9, 2]:  # in order, then jumping back (evicted chunks)
        c = clips[i]
        want = truth[:, i : i + 6]
        assert c["x"].dtype == torch.float32 and c["mask"].dtype == torch.bool
        np.testing.assert_array_equal(c["mask"].numpy(), np.isfinite(want))
        np.testing.assert_array_equal(c["x"].numpy(), np.where(np.isfinite(want), want, 0.0))
        assert int(c["start"]) == i
    val = ClipDataset(path, "val", frames=6)
    np.testing.assert_array_equal(val[0]["x"].numpy()[0], truth[0, 15:21])
    again = pickle.loads(pickle.dumps(clips))  # what a DataLoader worker receives: no open store, no cache
    np.testing.assert_array_equal(again[5]["x"].numpy(), clips[5]["x"].numpy())


@pytest.mark.parametrize(("n", "block", "world"), [(50, 1, 1), (50, 8, 1), (50, 8, 2), (7, 16, 1)])
def test_block_shuffled_epochs_are_permutations_in_blocks_and_resume_anywhere(n: int, block: int, world: int) -> None:
    from itertools import islice

    from pipeline.data.clips import ClipSampler

    streams = [list(islice(iter(ClipSampler(n, 3, r, world, block=block)), 3 * (n // world))) for r in range(world)]
    per = n // world
    for e in range(3):
        epoch = sorted(i for s in streams for i in s[e * per : (e + 1) * per])
        assert len(set(epoch)) == per * world and set(epoch) <= set(range(n))  # each clip at most once per epoch
    if block > 1 and world == 1:
        first, pos, order = streams[0][:n], 0, []
        while pos < n:  # the epoch is the blocks one after another, each whole, shuffled inside
            b = first[pos] // block
            members = set(range(b * block, min((b + 1) * block, n)))
            assert set(first[pos : pos + len(members)]) == members
            order.append(b)
            pos += len(members)
        assert first != sorted(first) and (order != sorted(order) or len(order) == 1)
    for start in (0, 5, per + 2):  # a resumed run draws what the uninterrupted one drew from there on
        again = list(islice(iter(ClipSampler(n, 3, 0, world, start=start, block=block)), 10))
        assert again == streams[0][start : start + 10]


def test_block_one_is_the_original_stream() -> None:
    from itertools import islice

    import torch as t

    from pipeline import seeding
    from pipeline.data.clips import ClipSampler

    got = list(islice(iter(ClipSampler(30, 5)), 30))
    want = t.randperm(30, generator=t.Generator().manual_seed(seeding.derive(5, 0))).tolist()
    assert got == want


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_each_codec_is_recorded_in_the_store_and_gives_the_same_clips(store, tmp_path: Path, codec: str) -> None:
    import zarr

    from pipeline.data.io import zarr_ready

    path, ds = store
    out = tmp_path / f"{codec}.zarr"
    zarr_ready(ds, 4, codec=codec).to_zarr(out, mode="w", zarr_format=3, consolidated=False)
    names = [type(c).__name__ for c in zarr.open_array(out / "a").compressors]
    assert names == {"zstd": ["ZstdCodec"], "lz4": ["BloscCodec"], "none": []}[codec]
    a, b = ClipDataset(path, "train", frames=6), ClipDataset(out, "train", frames=6)
    for i in (0, 4, 9):
        np.testing.assert_array_equal(a[i]["x"].numpy(), b[i]["x"].numpy())
    with pytest.raises(ValueError, match=r"data\.codec"):
        zarr_ready(ds, 4, codec="gzip")


def test_clips_never_cross_runs_and_carry_their_static_fields_and_forcings(tmp_path: Path) -> None:
    """Two runs (scenarios) in one store, each with its own train and validation periods: no clip spans two runs
    or two periods; each clip has the store's static fields and its own frames' forcings."""
    rng = np.random.default_rng(1)
    n = 20
    run = np.array([0] * 12 + [1] * 8, dtype=np.int8)
    split = np.array([1] * 10 + [2] * 2 + [1] * 6 + [2] * 2, dtype=np.int8)
    co2 = np.linspace(-1, 1, n).astype(np.float32)
    solar = rng.standard_normal(n).astype(np.float32)
    orog = rng.standard_normal((3, 5)).astype(np.float32)
    orog[0, 0] = np.nan  # a static field's missing cell reaches the network as 0
    ds = xr.Dataset(
        {
            "t": (("time", "latitude", "longitude"), rng.standard_normal((n, 3, 5)).astype(np.float32)),
            "orog": (("latitude", "longitude"), orog),
            "co2": ("time", co2),
            "solar": ("time", solar),
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=n, freq="D"),
            "latitude": [0.0, 10.0, 20.0],
            "longitude": np.arange(5) * 10.0,
            "split": ("time", split),
            "run": ("time", run),
        },
        attrs={"static_fields": ["orog"], "forcings": ["co2", "solar"]},
    )
    path = tmp_path / "runs.zarr"
    write_zarr(ds, path, time_chunk=4)
    train = ClipDataset(path, "train", frames=4)
    assert train.variables == ["t"]  # static fields and forcings are not clip variables
    starts = [int(train[i]["start"]) for i in range(len(train))]
    assert starts == [*range(0, 7), *range(12, 15)]  # none starts at 7-9 (into validation) or 9-11 (into run 1)
    for i in range(len(train)):
        c, s = train[i], int(train[i]["start"])
        assert len(set(run[s : s + 4])) == 1 and set(split[s : s + 4]) == {1}
        np.testing.assert_array_equal(c["forcing"].numpy(), np.stack([co2, solar], axis=-1)[s : s + 4])
        np.testing.assert_array_equal(c["static"].numpy(), np.nan_to_num(orog)[None])
    val = ClipDataset(path, "val", frames=2)
    assert [int(val[i]["start"]) for i in range(len(val))] == [10, 18]
    with pytest.raises(DataError, match="longest period has 2 time steps"):
        ClipDataset(path, "val", frames=3)
    ds_norun = ds.drop_vars("run")
    write_zarr(ds_norun, tmp_path / "norun.zarr", time_chunk=4)
    with pytest.raises(DataError, match="not one contiguous period"):  # without runs, a split in two is an error
        ClipDataset(tmp_path / "norun.zarr", "train", frames=4)
