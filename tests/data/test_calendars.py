"""Time in every CF calendar, calendar months, time axes across files, day of year, calendar-aware splits.

Expected dates are derived by hand from the calendars' rules (360_day: twelve 30-day months; noleap: no
29 February; all_leap: always one; julian: every fourth year a leap year, 1900 included).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

import cftime
import numpy as np
import pytest
import xarray as xr

from pipeline.data.coords import DataError
from pipeline.data.io import open_source, open_store, resolve_paths, write_zarr
from pipeline.data.stats import split_labels, split_periods
from pipeline.data.times import day_of_year, format_time, in_period, regular_times


def _write(
    path: Path, values: list[float] | np.ndarray, units: str, calendar: str | None = None, fill: float = 1.0
) -> Path:
    """A small file with raw numeric times (written as they are, with their CF attributes)."""
    attrs = {"standard_name": "time", "axis": "T", "units": units} | ({"calendar": calendar} if calendar else {})
    n = len(values)
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), np.full((n, 2, 3), fill), {"units": "K"})},
        coords={
            "time": ("time", np.asarray(values, dtype=np.float64), attrs),
            "lat": ("lat", [10.0, 20.0], {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ("lon", [0.0, 10.0, 20.0], {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )
    ds.to_netcdf(path, engine="netcdf4")
    return path


def _days(ds: xr.Dataset) -> list[str]:
    return [format_time(t)[:10] for t in ds["time"].values]


@pytest.mark.parametrize(
    ("calendar", "units", "values", "expected"),
    [
        ("standard", "days since 2000-01-01", [0, 59, 366], ["2000-01-01", "2000-02-29", "2001-01-01"]),
        ("gregorian", "hours since 1900-01-01", [0, 59 * 24, 365 * 24], ["1900-01-01", "1900-03-01", "1901-01-01"]),
        ("proleptic_gregorian", "days since 2000-01-01", [0, 59, 366], ["2000-01-01", "2000-02-29", "2001-01-01"]),
        ("noleap", "days since 2000-01-01", [0, 59, 365], ["2000-01-01", "2000-03-01", "2001-01-01"]),
        ("365_day", "days since 2000-01-01", [0, 59, 365], ["2000-01-01", "2000-03-01", "2001-01-01"]),
        ("all_leap", "days since 1999-01-01", [0, 59, 366], ["1999-01-01", "1999-02-29", "2000-01-01"]),
        ("366_day", "days since 1999-01-01", [0, 59, 366], ["1999-01-01", "1999-02-29", "2000-01-01"]),
        ("360_day", "days since 2000-01-01", [0, 59, 360], ["2000-01-01", "2000-02-30", "2001-01-01"]),
        ("julian", "days since 1900-01-01", [0, 59, 366], ["1900-01-01", "1900-02-29", "1901-01-01"]),
    ],
)
def test_each_calendar_decodes(tmp_path: Path, calendar: str, units: str, values: list, expected: list) -> None:
    ds = open_source([_write(tmp_path / "in.nc", values, units, calendar)])
    assert _days(ds) == expected
    t = ds["time"].values
    if calendar in ("standard", "gregorian", "proleptic_gregorian"):
        assert t.dtype.kind == "M"
    else:  # kept in its own calendar, never converted
        canonical = {"365_day": "noleap", "366_day": "all_leap"}.get(calendar, calendar)
        assert t.dtype == object and {d.calendar for d in t} == {canonical}
        assert ds["time"].encoding["calendar"] == canonical


def test_360_day_round_trips_through_zarr(tmp_path: Path) -> None:
    ds = open_source([_write(tmp_path / "in.nc", [58, 59, 60], "days since 2000-01-01", "360_day")])
    write_zarr(ds, tmp_path / "out.zarr", time_chunk=2)
    back = open_store(tmp_path / "out.zarr")
    assert _days(back) == ["2000-02-29", "2000-02-30", "2000-03-01"]
    assert back["time"].values[0].calendar == "360_day"


def test_months_since_are_calendar_months(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "ncep.nc", [0, 1, 13], "months since 1958-1-1")
    with caplog.at_level(logging.INFO, logger="pipeline.data.times"):
        ds = open_source([path])
    assert _days(ds) == ["1958-01-01", "1958-02-01", "1959-02-01"]
    assert ds["time"].values.dtype.kind == "M"
    assert any("calendar months" in r.getMessage() and "standard calendar" in r.getMessage() for r in caplog.records)


def test_months_and_years_in_other_calendars(tmp_path: Path) -> None:
    ds = open_source([_write(tmp_path / "a.nc", [0, 1, 2], "months since 2000-01-30", "360_day")])
    assert _days(ds) == ["2000-01-30", "2000-02-30", "2000-03-30"]
    assert ds["time"].values[1].calendar == "360_day"
    # a day past the end of a month becomes its last day, like CDO
    ds = open_source([_write(tmp_path / "b.nc", [0, 1], "months since 2001-01-31", "noleap")])
    assert _days(ds) == ["2001-01-31", "2001-02-28"]
    ds = open_source([_write(tmp_path / "c.nc", [0, 4], "years since 1999-02-29", "all_leap")])
    assert _days(ds) == ["1999-02-29", "2003-02-29"]


def test_fractional_months_are_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "frac.nc", [0, 0.5], "months since 1958-01-01")
    with pytest.raises(DataError, match=r"frac.nc: variable 'time' counts 'months since 1958-01-01'.*not whole"):
        open_source([path])


def test_units_without_reference(tmp_path: Path) -> None:
    path = _write(tmp_path / "noref.nc", [0, 31, 59], "days")
    with pytest.raises(
        DataError, match=r"noref.nc: time coordinate 'time' has units 'days'.*data.source.time_reference"
    ):
        open_source([path])
    ds = open_source([path], time_reference="1950-01-01")
    assert _days(ds) == ["1950-01-01", "1950-02-01", "1950-03-01"]
    ds = open_source([_write(tmp_path / "h.nc", [0, 30], "hours", "360_day")], time_reference="2000-02-29")
    assert [format_time(t) for t in ds["time"].values] == ["2000-02-29T00:00:00", "2000-02-30T06:00:00"]


@pytest.mark.parametrize(
    ("units", "calendar", "values", "expected"),
    [  # CDO's absolute time (cdo -a; ICON, MPI-ESM): the value spells the date, the fraction is of the day
        (
            "day as %Y%m%d.%f",
            None,  # CDI's default: proleptic_gregorian
            [20000101.5, 20000102.25, 20000229.75, 20000301.0],
            ["2000-01-01T12:00:00", "2000-01-02T06:00:00", "2000-02-29T18:00:00", "2000-03-01T00:00:00"],
        ),
        (
            "day as %Y%m%d.%f",
            "360_day",
            [20000229.5, 20000230.0, 20001230.875],
            ["2000-02-29T12:00:00", "2000-02-30T00:00:00", "2000-12-30T21:00:00"],
        ),
        ("days as %Y%m%d.%f", "noleap", [19990228.5, 19990301.0], ["1999-02-28T12:00:00", "1999-03-01T00:00:00"]),
        # months and years as CDI reads them: the first of the month / year (CDO writes 200001.5 for any day in it)
        ("month as %Y%m.%f", "standard", [200001.5, 200002.5, 200101.0], ["2000-01-01", "2000-02-01", "2001-01-01"]),
        ("year as %Y.%f", "360_day", [1850.0, 1851.0], ["1850-01-01", "1851-01-01"]),
    ],
)
def test_cdo_absolute_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, units: str, calendar: str | None, values: list, expected: list
) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.data.times"):
        ds = open_source([_write(tmp_path / "icon.nc", values, units, calendar)])
    got = [format_time(t)[: len(expected[0])] for t in ds["time"].values]
    assert got == expected
    canonical = {None: "proleptic_gregorian"}.get(calendar, calendar)
    assert ds["time"].encoding["calendar"] == canonical
    assert (ds["time"].values.dtype.kind == "M") == (canonical in ("standard", "proleptic_gregorian"))
    assert f"'{units}', CDO's absolute time) as dates in the {canonical} calendar" in caplog.text


def test_cdo_absolute_time_bounds_and_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.nc", [20000101.5, 20000102.5], "day as %Y%m%d.%f", "proleptic_gregorian")
    raw = xr.open_dataset(path, decode_times=False).load()
    raw["time"].attrs["bounds"] = "time_bnds"
    raw["time_bnds"] = (("time", "bnds"), [[20000101.0, 20000102.0], [20000102.0, 20000103.0]])
    raw.to_netcdf(tmp_path / "bounds.nc")
    ds = open_source([tmp_path / "bounds.nc"])  # bounds without units take the coordinate's
    assert [format_time(t)[:10] for t in ds["time_bnds"].values[:, 1]] == ["2000-01-02", "2000-01-03"]
    bad = _write(tmp_path / "feb29.nc", [20010228.0, 20010229.0], "day as %Y%m%d.%f", "proleptic_gregorian")
    with pytest.raises(DataError, match=r"feb29.nc: variable 'time' has the value 20010229, which is no date in the "):
        open_source([bad])
    hours = _write(tmp_path / "hours.nc", [20000101.0], "hour as %Y%m%d.%f")
    with pytest.raises(DataError, match=r"hours.nc: .*'hour as %Y%m%d.%f'.*not one CDO writes.*cdo -r copy"):
        open_source([hours])


def _nemo(path: Path, steps: int = 4, first_day: int = 0, instant: bool = False) -> Path:
    """NEMO (XIOS) output as it is written: the time dimension's coordinate time_counter carries only axis T, the
    times are in the auxiliary time_centered (seconds since 1900-01-01) with time_centered_bounds; time_instant
    (the end of each step) where the file holds instantaneous fields too."""
    centred = 3155673600.0 + 86400.0 * (first_day + np.arange(steps)) + 43200.0  # 2000-01-01 12:00 onwards
    cf = {"standard_name": "time", "calendar": "gregorian", "units": "seconds since 1900-01-01 00:00:00"}
    ds = xr.Dataset(
        {
            "tos": (
                ("time_counter", "y", "x"),
                np.full((steps, 2, 3), 290.0, np.float32),
                {"units": "K", "coordinates": "time_centered nav_lat nav_lon", "cell_methods": "time: mean"},
            ),
            "time_centered_bounds": (("time_counter", "axis_nbounds"), np.stack([centred - 43200, centred + 43200], 1)),
        },
        coords={
            "time_counter": ("time_counter", centred, {"axis": "T"}),
            "time_centered": ("time_counter", centred, {**cf, "bounds": "time_centered_bounds"}),
            "nav_lat": (("y", "x"), [[10.0, 10.5, 11.0], [20.0, 20.5, 21.0]], {"standard_name": "latitude"}),
            "nav_lon": (("y", "x"), [[0.0, 10.0, 20.0], [1.0, 11.0, 21.0]], {"standard_name": "longitude"}),
        },
        attrs={"name": "ORCA1_1d_grid_T", "description": "ocean T grid variables", "timeStamp": "2000-Jan-01"},
    )
    if instant:
        ds = ds.assign_coords(time_instant=("time_counter", centred + 43200, cf))
    ds.to_netcdf(path)
    return path


def test_nemo_time_from_time_centered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.data.times"):
        ds = open_source([_nemo(tmp_path / "a.nc")])
    assert [format_time(t) for t in ds["time_centered"].values[:2]] == ["2000-01-01T12:00:00", "2000-01-02T12:00:00"]
    assert ds["tos"].dims[0] == "time_centered" and "time_counter" not in ds.variables
    assert ds["time_centered_bounds"].values[0, 0] == np.datetime64("2000-01-01")
    assert re.search(
        r"a.nc: time coordinate 'time_counter' has no units; its times are read from 'time_centered'", caplog.text
    )
    # files of it join along time, as any other
    files = [_nemo(tmp_path / f"m{i}.nc", first_day=4 * i) for i in (1, 0)]
    assert _days(open_source(files).rename(time_centered="time")) == [f"2000-01-{d:02d}" for d in range(1, 9)]


def test_nemo_time_candidates_that_disagree(tmp_path: Path) -> None:
    path = _nemo(tmp_path / "both.nc", instant=True)
    with pytest.raises(
        DataError,
        match=r"both.nc: time coordinate 'time_counter' has no usable units, and the variables along its dimension "
        r"'time_counter' that have them disagree: 'time_centered' \(2000-01-01T12:00:00 .. 2000-01-04T12:00:00\), "
        r"'time_instant' \(2000-01-02T00:00:00 .. 2000-01-05T00:00:00\); set data.source.coordinates.time",
    ):
        open_source([path])
    ds = open_source([path], time_coordinate="time_instant")
    assert ds["tos"].dims[0] == "time_instant" and "time_centered" not in ds.coords
    assert format_time(ds["time_instant"].values[0]) == "2000-01-02T00:00:00"
    with pytest.raises(
        DataError,
        match=r"data.source.coordinates.time = 'time' is not a variable of the file; .*"
        r"'time_centered', 'time_counter', 'time_instant'",
    ):
        open_source([path], time_coordinate="time")


def test_time_from_the_bounds_of_a_coordinate_without_units(tmp_path: Path) -> None:
    ds = xr.open_dataset(_nemo(tmp_path / "a.nc"), decode_times=False).load()
    ds = ds.drop_vars(["time_centered", "time_centered_bounds"])
    ds["time_counter"].attrs["bounds"] = "time_counter_bounds"
    ds["time_counter_bounds"] = (
        ("time_counter", "nb"),
        (ds["time_counter"].values - 3155673600.0)[:, None] / 86400 + [[-0.5, 0.5]],
        {"units": "days since 2000-01-01", "calendar": "noleap"},
    )
    ds.to_netcdf(tmp_path / "bounds.nc")
    got = open_source([tmp_path / "bounds.nc"])["time_counter"].values
    assert [format_time(t) for t in got[:2]] == ["2000-01-01T12:00:00", "2000-01-02T12:00:00"]
    assert got[0].calendar == "noleap"


def test_overlap_is_an_error_naming_both_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nc", np.arange(0, 10), "days since 2000-01-01")
    b = _write(tmp_path / "b.nc", np.arange(5, 15), "days since 2000-01-01")
    with pytest.raises(
        DataError,
        match=r"a.nc \(2000-01-01T00:00:00 .. 2000-01-10T00:00:00\) and .*b.nc \(2000-01-06T00:00:00 .. "
        r"2000-01-15T00:00:00\) overlap by 5 steps; set data.source.overlap: later_wins",
    ):
        open_source([b, a])


def test_later_wins_keeps_the_later_file(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nc", np.arange(0, 10), "days since 2000-01-01", "noleap", fill=1.0)
    b = _write(tmp_path / "b.nc", np.arange(5, 15), "days since 2000-01-01", "noleap", fill=2.0)
    ds = open_source([b, a], overlap="later_wins")  # ordered by time, not by the list
    assert ds.sizes["time"] == 15
    assert _days(ds)[0] == "2000-01-01" and _days(ds)[-1] == "2000-01-15"
    np.testing.assert_array_equal(ds["tas"].values[:, 0, 0], [1.0] * 5 + [2.0] * 10)


def test_gap_is_an_error_naming_both_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nc", np.arange(0, 10), "days since 2000-01-01")
    b = _write(tmp_path / "b.nc", np.arange(15, 25), "days since 2000-01-01")
    with pytest.raises(DataError, match=r"time steps are missing between .*a.nc .* and .*b.nc .*add the file"):
        open_source([a, b])
    # a file of one step is judged by the other file's step
    assert open_source([a, _write(tmp_path / "c.nc", [10], "days since 2000-01-01")]).sizes["time"] == 11
    with pytest.raises(DataError, match=r"missing between .*a.nc .* and .*d.nc"):
        open_source([a, _write(tmp_path / "d.nc", [12], "days since 2000-01-01")])


def _month_starts(first_year: int, months: int, calendar: str) -> np.ndarray:
    dates = [cftime.datetime(first_year + m // 12, m % 12 + 1, 1, calendar=calendar) for m in range(months)]
    return cftime.date2num(dates, "days since 1990-01-01", calendar=calendar)


@pytest.mark.parametrize("calendar", ["standard", "noleap"])
def test_monthly_and_yearly_files_that_abut_are_not_gaps(tmp_path: Path, calendar: str) -> None:
    units = "days since 1990-01-01"
    t = _month_starts(2000, 36, calendar)  # steps of 28..31 days
    files = [_write(tmp_path / f"m{i}.nc", t[12 * i : 12 * i + 12], units, calendar) for i in range(3)]
    ds = open_source(files)
    assert ds.sizes["time"] == 36 and _days(ds)[12] == "2001-01-01" and _days(ds)[-1] == "2002-12-01"
    # one month missing between the files is a gap (62 days > 1.5 x 31)
    with pytest.raises(DataError, match=r"missing between .*m0.nc .* and .*late.nc"):
        open_source([files[0], _write(tmp_path / "late.nc", t[13:24], units, calendar)])
    # one season per year (DJF means dated 15 January), in two files: steps of 365 and 366 days
    jan = [cftime.date2num(cftime.datetime(y, 1, 15, calendar=calendar), units, calendar) for y in range(1998, 2006)]
    ds = open_source(
        [_write(tmp_path / "y0.nc", jan[:3], units, calendar), _write(tmp_path / "y1.nc", jan[3:], units, calendar)]
    )
    assert _days(ds) == [f"{y}-01-15" for y in range(1998, 2006)]


def test_variables_in_separate_files_are_merged(tmp_path: Path) -> None:
    a = _write(tmp_path / "tas.nc", np.arange(4), "days since 2000-01-01", "360_day")
    b = tmp_path / "pr.nc"
    xr.open_dataset(a, decode_times=False).rename(tas="pr").to_netcdf(b)
    ds = open_source([a, b])
    assert sorted(ds.data_vars) == ["pr", "tas"] and ds.sizes["time"] == 4


def test_different_calendars_are_an_error(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nc", np.arange(0, 10), "days since 2000-01-01", "360_day")
    b = _write(tmp_path / "b.nc", np.arange(10, 20), "days since 2000-01-01", "noleap")
    with pytest.raises(DataError, match=r"different calendars .*a.nc: 360_day.*b.nc: noleap"):
        open_source([a, b])


def test_day_of_year() -> None:
    d360 = np.array(
        [cftime.datetime(2000, *md, calendar="360_day") for md in [(1, 1), (6, 30), (6, 30, 12), (12, 30, 18)]]
    )
    # 1 + (days since 1 January) / 360 x 365.25: day 180 of 360 (30 June) is 182.61
    np.testing.assert_allclose(
        day_of_year(d360), [1.0, 1 + 179 / 360 * 365.25, 1 + 179.5 / 360 * 365.25, 1 + 359.75 / 360 * 365.25], atol=1e-3
    )
    std = np.array(["2000-01-01", "2000-03-01", "2001-03-01", "2001-12-31T12:00"], dtype="datetime64[ns]")
    expected = [1.0, 1 + 60 / 366 * 365.25, 1 + 59 / 365 * 365.25, 1 + 364.5 / 365 * 365.25]
    out = day_of_year(std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-3)
    as_cftime = np.array([cftime.DatetimeGregorian(*map(int, str(t)[:10].split("-"))) for t in std[:3]])
    np.testing.assert_allclose(day_of_year(as_cftime), expected[:3], atol=1e-3)
    noleap = np.array([cftime.datetime(2001, 3, 1, calendar="noleap"), cftime.datetime(2004, 3, 1, calendar="noleap")])
    np.testing.assert_allclose(day_of_year(noleap), [1 + 59 / 365 * 365.25] * 2, atol=1e-3)


def _daily(calendar: str, n: int) -> xr.Dataset:
    t = np.array([cftime.datetime(2000, 1, 1, calendar=calendar) + dt.timedelta(days=i) for i in range(n)])
    return xr.Dataset({"x": ("time", np.arange(n, dtype=float))}, coords={"time": t})


@pytest.mark.parametrize(
    ("calendar", "n", "counts", "none"),
    [
        # noleap: 365 days in 2000; January and February 2001: 31 + 28; March..December 2001: 306
        ("noleap", 730, {"train": 365, "val": 59, "test": 306}, 0),
        # 360_day: 31 December does not exist (the period runs to 30 December); January and February
        # 2001 up to the 28th: 30 + 28 (29 and 30 February are in no period); March..December 2001: 300
        ("360_day", 720, {"train": 360, "val": 58, "test": 300}, 2),
    ],
)
def test_split_in_calendars(calendar: str, n: int, counts: dict, none: int) -> None:
    ds = _daily(calendar, n)
    periods = {
        "train": (dt.date(2000, 1, 1), dt.date(2000, 12, 31)),
        "val": (dt.date(2001, 1, 1), dt.date(2001, 2, 28)),
        "test": (dt.date(2001, 3, 1), dt.date(2001, 12, 31)),
    }
    parts = split_periods(ds, periods)
    assert {k: v.sizes["time"] for k, v in parts.items()} == counts
    labels = split_labels(ds["time"].values, periods).values
    assert [int((labels == c).sum()) for c in (1, 2, 3)] == list(counts.values())
    assert int((labels == 0).sum()) == none
    with pytest.raises(DataError, match=rf"holds no time step .* 2000-01-01 .. 2001-12-\d\d \({n} steps, {calendar}"):
        split_periods(ds, {"test": (dt.date(2020, 1, 1), dt.date(2020, 12, 31))})


def test_period_end_is_counted_in_the_calendar() -> None:
    t = _daily("360_day", 90)["time"].values
    # 29 February .. 1 March: the 29th, the 30th and 1 March (the end bound is 2000-03-01 + 1 day)
    assert _days(xr.Dataset(coords={"time": t[in_period(t, dt.date(2000, 2, 29), dt.date(2000, 3, 1))]})) == [
        "2000-02-29",
        "2000-02-30",
        "2000-03-01",
    ]
    t = _daily("noleap", 90)["time"].values
    assert int(in_period(t, dt.date(2000, 2, 28), dt.date(2000, 3, 1)).sum()) == 2  # no 29 February


def test_regular_times_continue_in_the_calendar() -> None:
    yearly = np.array(["1948-01-15", "1949-01-15", "1950-01-15"], dtype="datetime64[ns]")
    assert [format_time(t)[:10] for t in regular_times(yearly, yearly[-1], 3)] == [
        "1950-01-15",
        "1951-01-15",
        "1952-01-15",
    ]
    daily = _daily("360_day", 40)["time"].values
    assert [format_time(t)[:10] for t in regular_times(daily, daily[-1], 3)] == [
        "2000-02-10",
        "2000-02-11",
        "2000-02-12",
    ]
    monthly = np.array([cftime.datetime(2000, m, 30, calendar="360_day") for m in (1, 2, 3)])
    assert [format_time(t)[:10] for t in regular_times(monthly, monthly[-1], 11)][-2:] == ["2000-12-30", "2001-01-30"]


def test_bundled_default_data_still_opens() -> None:
    ds = open_source(resolve_paths(["bundled:eofs/hgt_djf.nc"]))
    assert ds.sizes["time"] == 65 and ds["time"].values.dtype.kind == "M"
    assert _days(ds)[0] == "1948-01-15" and _days(ds)[-1] == "2012-01-15"
    assert ds["bounds_time"].values.dtype.kind == "M"  # the bounds share the coordinate's units and calendar


def test_clips_carry_the_day_of_year_of_their_calendar(tmp_path: Path) -> None:
    from pipeline.data.clips import ClipDataset

    times = _daily("360_day", 12)["time"].values + dt.timedelta(days=174)  # 2000-06-25 .. 2000-07-06
    ds = xr.Dataset(
        {"x": (("time", "latitude", "longitude"), np.zeros((12, 2, 3), dtype=np.float32))},
        coords={"time": times, "latitude": [0.0, 10.0], "longitude": [0.0, 10.0, 20.0], "split": ("time", [1] * 12)},
    )
    write_zarr(ds, tmp_path / "n.zarr", time_chunk=4)
    clips = ClipDataset(tmp_path / "n.zarr", "train", frames=4)
    np.testing.assert_allclose(clips.doy, day_of_year(times), atol=1e-4)
    assert format_time(times[5])[:10] == "2000-06-30"
    assert clips[2]["doy"][3].item() == pytest.approx(1 + 179 / 360 * 365.25, abs=1e-3)  # 30 June, day 180 of 360
