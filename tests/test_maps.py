"""Maps: coastlines and borders drawn from installed data with the network unreachable (dark pixels where
the land is, none over open ocean), a projection that suits the domain, and rollout animations (GIF and MP4)
with truth and difference panels."""

from __future__ import annotations

import socket
from pathlib import Path

import cartopy.crs as ccrs
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from PIL import Image

from pipeline.plots import _map, animate_rollout, map_axes, projection


@pytest.fixture
def offline(monkeypatch):
    """Every socket connection fails, as on a compute node without a route out."""

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _field(lat: np.ndarray, lon: np.ndarray, value: float = 5.0) -> xr.DataArray:
    return xr.DataArray(
        np.full((lat.size, lon.size), value),
        dims=("latitude", "longitude"),
        coords={"latitude": lat, "longitude": lon},
        name="t",
        attrs={"units": "K"},
    )


def _dark_pixels(da: xr.DataArray, path: Path) -> int:
    """Dark pixels of a bare map (no frame, title or colour bar) of a constant, bright field: only outlines."""
    fig = plt.figure(figsize=(4, 3))
    ax = map_axes(fig, fig.add_gridspec(1, 1)[0, 0], da)
    _map(ax, da, 0.0, 1.0, "", "Greys_r")  # 5 > vmax: white everywhere
    ax.spines["geo"].set_visible(False)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((rgb.sum(axis=-1) < 200).sum())


def test_maps_have_coastlines_over_land_and_none_over_open_ocean_offline(offline, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="unreachable"):
        socket.create_connection(("naciscdn.org", 443), timeout=1)
    europe = _dark_pixels(_field(np.arange(35.0, 70.0, 2.5), np.arange(-10.0, 30.0, 2.5)), tmp_path / "eu.png")
    ocean = _dark_pixels(_field(np.arange(-50.0, -39.0, 2.5), np.arange(-125.0, -100.0, 2.5)), tmp_path / "sp.png")
    world = _dark_pixels(_field(np.arange(-88.75, 90.0, 2.5), np.arange(0.0, 360.0, 2.5)), tmp_path / "gl.png")
    assert europe > 1000 and world > 1000, (europe, world)
    assert ocean == 0, ocean  # the South Pacific between 40S and 50S, 100W and 125W holds no land


def test_projection_suits_the_domain() -> None:
    world = projection(_field(np.arange(-88.75, 90.0, 2.5), np.arange(0.0, 360.0, 2.5)))
    assert isinstance(world, ccrs.PlateCarree) and world.proj4_params["pm"] == 180.0
    regional = projection(_field(np.arange(20.0, 90.0, 5.0), np.arange(-80.0, 40.0, 5.0)))
    assert isinstance(regional, ccrs.LambertAzimuthalEqualArea)
    assert regional.proj4_params["lon_0"] == pytest.approx(-20.0, abs=3) and regional.proj4_params["lat_0"] > 50
    pacific = projection(
        _field(
            np.arange(-10.0, 10.0, 2.0), np.concatenate([np.arange(160.0, 180.0, 2.0), np.arange(-180.0, -160.0, 2.0)])
        )
    )
    assert abs(abs(pacific.proj4_params["lon_0"]) - 180.0) < 2.0  # centred on the dateline, not on Greenwich


@pytest.mark.slow
def test_rollout_animation_gif_and_mp4_with_frames_past_the_data(tmp_path: Path) -> None:
    lat, lon = np.arange(35.0, 70.0, 5.0), np.arange(-10.0, 30.0, 5.0)
    rng = np.random.default_rng(0)
    sample = xr.DataArray(
        rng.normal(280, 5, (6, lat.size, lon.size)),
        dims=("lead", "latitude", "longitude"),
        coords={"latitude": lat, "longitude": lon},
        name="t2m",
        attrs={"units": "K"},
    )
    truth = sample + rng.normal(0, 1, sample.shape)
    truth[4:] = np.nan  # the data end after 4 frames
    times = np.arange("2010-01-01", "2010-01-07", dtype="datetime64[D]")
    gif, mp4 = animate_rollout(sample, truth, times, [tmp_path / "r.gif", tmp_path / "r.mp4"])
    assert Image.open(gif).n_frames == 6
    head = mp4.read_bytes()[:64]
    assert b"ftyp" in head and mp4.stat().st_size > 5000
