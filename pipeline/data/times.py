"""Time coordinates in every CF calendar: decoding, multi-file time axes, day of year, periods.

Times are numpy ``datetime64`` for the standard calendars (within its range) and ``cftime``
datetimes otherwise, so a 360_day or noleap date is never silently converted. ``months since`` and
``years since`` are decoded as calendar months and years, the way CDO does.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, NamedTuple

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from pipeline.data.coords import DataError

__all__ = [
    "CALENDARS",
    "calendar_of",
    "check_time_axes",
    "climatology_candidates",
    "day_of_year",
    "decode_time",
    "find_time",
    "format_time",
    "in_period",
    "regular_times",
    "time_seconds",
]

log = logging.getLogger(__name__)

# CF calendars and their canonical names
CALENDARS = {
    "standard": "standard",
    "gregorian": "standard",
    "proleptic_gregorian": "proleptic_gregorian",
    "noleap": "noleap",
    "365_day": "noleap",
    "all_leap": "all_leap",
    "366_day": "all_leap",
    "360_day": "360_day",
    "julian": "julian",
}
_REAL_WORLD = ("standard", "proleptic_gregorian")
_SINCE = re.compile(r"^\s*([a-z_]+)\s+since\s+(\S.*?)\s*$", re.IGNORECASE)
_CALENDAR_UNITS = {"months": 1, "month": 1, "years": 12, "year": 12}
_TIME_UNITS = (
    *_CALENDAR_UNITS,
    *("days", "day", "d", "hours", "hour", "hr", "h", "minutes", "minute", "min", "seconds", "second", "sec", "s"),
)
_TIME_NAMES = ("time", "valid_time", "t")
# CDO/CDI's absolute time axes (``cdo -a``; ICON and MPI-M output): the value spells the date in the file's
# calendar. CDI writes exactly these three (its cdfGetTimeUnits); 'days' and 'calendar_month' are spellings it reads.
_AS = re.compile(r"^\s*([a-z_]+)\s+as\s+(\S+)\s*$", re.IGNORECASE)
_ABSOLUTE = {"day": "%Y%m%d.%f", "month": "%Y%m.%f", "year": "%Y.%f"}
_ABSOLUTE_NAMES = {
    "days": "day",
    "months": "month",
    "calendar_month": "month",
    "years": "year",
    "calendar_year": "year",
}
_ABSOLUTE_CALENDAR = "proleptic_gregorian"  # CDI's default calendar for a time axis without one
TIME_KEY = "data.source.coordinates.time"


def _absolute_unit(units: str) -> str | None:
    """'day', 'month' or 'year' for CDO's absolute units ('day as %Y%m%d.%f'), None for other units."""
    m = _AS.match(units)
    if m is None:
        return None
    return _ABSOLUTE_NAMES.get(m[1].lower(), m[1].lower())


def _has_units(var: xr.Variable, reference: str | None) -> bool:
    """Whether ``var`` holds times that can be decoded as they are (or with ``data.source.time_reference``)."""
    units = str(var.attrs.get("units", "")).strip()
    return (
        var.dtype.kind in "MO"
        or bool(_SINCE.match(units) or _AS.match(units))
        or (reference is not None and units.lower() in _TIME_UNITS)
    )


def _is_time(name: Any, var: xr.Variable) -> bool:
    a = var.attrs
    return (
        a.get("standard_name") == "time"
        or str(a.get("axis", "")).upper() == "T"
        or bool(_SINCE.match(str(a.get("units", ""))))
        or _absolute_unit(str(a.get("units", ""))) in _ABSOLUTE
        or str(name).lower() in _TIME_NAMES
        or var.dtype.kind == "M"
        or (var.dtype.kind == "O" and var.size > 0 and isinstance(var.values.flat[0], cftime.datetime))
    )


def find_time(ds: xr.Dataset) -> str | None:
    """The time coordinate: a dimension coordinate first, else a 1-D coordinate, found by CF attributes
    (standard_name time, axis T, units '<unit> since <date>', datetime values) or name (time, valid_time, t)."""
    one_d = [(n, v) for n, v in ds.coords.items() if v.ndim == 1 and _is_time(n, v.variable)]
    for group in ([n for n, v in one_d if v.dims[0] == n], [n for n, _ in one_d]):
        if group:
            best = [n for n in group if ds[n].attrs.get("standard_name") == "time"]
            return str((best or group)[0])
    return None


def _calendar(attrs: dict, source: str, name: str) -> str:
    units = str(attrs.get("units", ""))
    default = _ABSOLUTE_CALENDAR if _absolute_unit(units) is not None else "standard"
    cal = str(attrs.get("calendar", default)).lower()
    if cal not in CALENDARS:
        msg = f"{source}: variable {name!r} has calendar {cal!r}; CF calendars are {sorted(CALENDARS)}"
        raise DataError(msg)
    return CALENDARS[cal]


def _add_months(ref: cftime.datetime, months: int) -> cftime.datetime:
    """``ref`` plus whole calendar months; a day past the month's end becomes its last day (like CDO)."""
    y, m = divmod(ref.month - 1 + months, 12)
    first = cftime.datetime(ref.year + y, m + 1, 1, calendar=ref.calendar, has_year_zero=ref.has_year_zero)
    day = min(ref.day, first.daysinmonth)
    return first.replace(day=day, hour=ref.hour, minute=ref.minute, second=ref.second, microsecond=ref.microsecond)


def _to_numpy(dates: list[cftime.datetime], calendar: str) -> np.ndarray:
    """datetime64 for real-world calendars within its range (as xarray decodes them), else cftime objects."""
    if calendar in _REAL_WORLD and all(1678 < d.year < 2262 and (d.year, d.month) > (1582, 10) for d in dates):
        return np.array([np.datetime64(d.isoformat()) for d in dates], dtype="datetime64[ns]")
    return np.array(dates, dtype=object)


def _decode_calendar_months(
    var: xr.Variable, unit: str, ref: str, calendar: str, source: str, name: str
) -> xr.Variable:
    values = np.asarray(var.values, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        bad = values[~np.isfinite(values) | (values != np.round(values))][:3]
        msg = (
            f"{source}: variable {name!r} counts '{unit} since {ref}' with values that are not whole {unit} "
            f"(e.g. {bad.tolist()}); calendar {unit} have no fixed length, so only whole numbers can be decoded"
        )
        raise DataError(msg)
    try:
        start = cftime.num2date(0, f"days since {ref}", calendar=calendar)
    except ValueError as e:
        msg = f"{source}: variable {name!r} has an unreadable reference date in '{unit} since {ref}' ({e})"
        raise DataError(msg) from e
    k = _CALENDAR_UNITS[unit.lower()]
    dates = [_add_months(start, int(v) * k) for v in values.ravel()]
    attrs = {a: v for a, v in var.attrs.items() if a not in ("units", "calendar")}
    return xr.Variable(var.dims, _to_numpy(dates, calendar).reshape(values.shape), attrs, {"calendar": calendar})


def _absolute_fields(var: xr.Variable, units: str, source: str, name: str) -> np.ndarray:
    """(year, month, day, second of day) of each value in CDO's absolute units; the fraction of a month or a
    year is dropped (CDO writes 200001.5 for any day in January 2000 and reads it as 2000-01-01)."""
    unit = _absolute_unit(units)
    form = _AS.match(units)[2]  # type: ignore[index]
    if unit not in _ABSOLUTE or form != _ABSOLUTE[unit]:
        cdo = ", ".join(f"'{u} as {f}'" for u, f in _ABSOLUTE.items())
        msg = (
            f"{source}: variable {name!r} has units {units!r}: an absolute time axis, but not one CDO writes ({cdo}); "
            f"convert the file to CF units ('<unit> since <date>') with 'cdo -r copy IN OUT'"
        )
        raise DataError(msg)
    values = np.asarray(var.values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values) & (values >= 0)):
        bad = values[~(np.isfinite(values) & (values >= 0))][:3]
        msg = f"{source}: variable {name!r} ('{units}') has values that spell no date: {bad.tolist()}"
        raise DataError(msg)
    whole = np.floor(values)
    digits = whole.astype(np.int64)
    if unit == "day":
        return np.stack([digits // 10000, digits // 100 % 100, digits % 100, np.rint((values - whole) * 86400)], 1)
    if unit == "month":
        return np.stack([digits // 100, digits % 100, np.ones_like(digits), np.zeros_like(digits)], 1)
    return np.stack([digits, np.ones_like(digits), np.ones_like(digits), np.zeros_like(digits)], 1)


def _decode_absolute(var: xr.Variable, units: str, calendar: str, source: str, name: str) -> xr.Variable:
    """CDO's absolute time ('day as %Y%m%d.%f': 20000101.5 is 2000-01-01 12:00) as dates in ``calendar``."""
    fields = _absolute_fields(var, units, source, name).astype(np.int64)
    year_zero = cftime.num2date(0, "days since 2000-01-01", calendar=calendar).has_year_zero
    dates = []
    for y, m, d, s in fields:
        try:
            day = cftime.datetime(int(y), int(m), int(d), calendar=calendar, has_year_zero=year_zero)
        except ValueError:
            value = float(np.asarray(var.values).ravel()[len(dates)])
            msg = (
                f"{source}: variable {name!r} has the value {value:.12g}, which is no date in the {calendar} calendar "
                f"('{units}' reads it as {y:04d}-{m:02d}-{d:02d}); check the variable's calendar attribute"
            )
            raise DataError(msg) from None
        dates.append(day + dt.timedelta(seconds=int(s)))
    attrs = {a: v for a, v in var.attrs.items() if a not in ("units", "calendar")}
    return xr.Variable(var.dims, _to_numpy(dates, calendar).reshape(var.shape), attrs, {"calendar": calendar})


def _decode_variable(var: xr.Variable, units: str, calendar: str, source: str, name: str) -> xr.Variable:
    if _AS.match(units):
        out = _decode_absolute(var, units, calendar, source, name)
        log.info(
            "%s: decoded %r ('%s', CDO's absolute time) as dates in the %s calendar", source, name, units, calendar
        )
        return out
    unit, ref = _SINCE.match(units).groups()  # type: ignore[union-attr]
    ref = re.sub(r"^(\d{1,3})-", lambda m: f"{int(m[1]):04d}-", ref)  # 'since 1-1-1' is year 0001, say so
    units = f"{unit} since {ref}"
    if unit.lower() in _CALENDAR_UNITS:
        out = _decode_calendar_months(var, unit, ref, calendar, source, name)
        log.info(
            "%s: decoded %r ('%s') as calendar %s in the %s calendar, the way CDO does",
            source,
            name,
            units,
            "months" if _CALENDAR_UNITS[unit.lower()] == 1 else "years",
            calendar,
        )
        return out
    var = var.copy(deep=False)
    var.attrs = {**var.attrs, "units": units, "calendar": calendar}
    coder = xr.coders.CFDatetimeCoder(use_cftime=None if calendar in _REAL_WORLD else True)
    try:
        out = coder.decode(var, name=name)
        out = out if out.chunks else out.load()  # in memory already (an index): decode now, so bad values fail here
    except (ValueError, TypeError, OverflowError) as e:
        msg = f"{source}: cannot decode variable {name!r} with units {units!r}, calendar {calendar!r} ({e})"
        raise DataError(msg) from e
    return out


def decode_time(ds: xr.Dataset, source: str, reference: str | None = None, coordinate: str | None = None) -> xr.Dataset:
    """Decode the time coordinate of ``ds`` (opened with ``decode_times=False``) and every other variable
    with time units (time bounds inherit the coordinate's units and calendar).

    Standard units (days/hours/minutes/seconds since) are decoded by xarray: datetime64 for the
    standard calendars, cftime for the others. ``months since`` and ``years since`` are whole calendar
    months or years added to the reference date (a day past the end of a month becomes its last day);
    fractional values are an error. CDO's absolute time (``day as %Y%m%d.%f``: 20000101.5 is
    2000-01-01 12:00; ``month as %Y%m.%f``, ``year as %Y.%f``) spells dates in the file's calendar
    (proleptic_gregorian where it names none, as CDI). ``reference`` (``data.source.time_reference``)
    completes units without a reference date (``days`` becomes ``days since <reference>``). A time
    coordinate without usable units (NEMO's ``time_counter``) takes its times from the variable along its
    dimension that has them (NEMO's ``time_centered``), or from the midpoints of its bounds; candidates
    that disagree are an error unless ``coordinate`` (``data.source.coordinates.time``) names the one
    to use. The calendar is kept in the encoding, so writing to zarr or NetCDF round-trips.
    """
    name = find_time(ds)
    if coordinate is not None:
        ds, name = _named_time(ds, name, source, coordinate)
    elif name is not None and not _has_units(ds[name].variable, reference):
        ds, name = _time_on_dimension(ds, name, source, reference)
    if name is None:
        return ds
    var = ds[name].variable
    if var.dtype.kind in "MO":
        return ds  # already decoded
    units = _time_units(var, source, name, reference)
    calendar = _calendar(var.attrs, source, name)
    decoded = {name: _decode_variable(var, units, calendar, source, name)}
    bounds = var.attrs.get("bounds")
    if bounds in ds.variables and "units" not in ds[bounds].attrs:
        decoded[bounds] = _decode_variable(ds[bounds].variable, units, calendar, source, bounds)
    for other, v in ds.variables.items():
        u = str(v.attrs.get("units", ""))
        if other not in decoded and (_SINCE.match(u) or _absolute_unit(u) in _ABSOLUTE) and v.dtype.kind in "iuf":
            decoded[str(other)] = _decode_variable(v, u, _calendar(v.attrs, source, str(other)), source, str(other))
    coords = {k: v for k, v in decoded.items() if k in ds.coords}
    return ds.assign_coords(coords).assign({k: v for k, v in decoded.items() if k not in coords})


def _time_units(var: xr.Variable, source: str, name: str, reference: str | None) -> str:
    """The units to decode ``var`` with: its own, or completed by ``reference``; none usable is an error."""
    units = str(var.attrs.get("units", "")).strip()
    if _SINCE.match(units) or _AS.match(units):
        return units
    if units.lower() in _TIME_UNITS and reference is not None:
        return f"{units} since {reference}"
    seen = f"units {units!r}" if units else "no units"
    hint = (
        "set data.source.time_reference: '1950-01-01' (the date its values count from)"
        if units.lower() in _TIME_UNITS
        else f"give it CF units such as 'days since 1950-01-01' (no variable along its dimension {var.dims[0]!r} "
        f"has them), or name the variable that holds its times with {TIME_KEY}"
    )
    msg = f"{source}: time coordinate {name!r} has {seen}, without a reference date ('<unit> since <date>'); {hint}"
    raise DataError(msg)


def _time_candidates(ds: xr.Dataset, name: str, reference: str | None) -> list[tuple[str, xr.Variable]]:
    """The variables along the time coordinate's dimension that have the time units it lacks (coordinates and
    standard_name time first), then the midpoints of its bounds (CF units only), labelled '<bounds> midpoints'."""
    dim = ds[name].dims[0]
    found = [
        (str(n), v)
        for n, v in ds.variables.items()
        if n != name and v.dims == (dim,) and v.dtype.kind in "iuf" and _has_units(v, reference)
    ]
    found.sort(key=lambda c: (c[0] not in ds.coords, c[1].attrs.get("standard_name") != "time"))
    bounds = ds[name].attrs.get("bounds")
    if bounds in ds.variables and ds[bounds].ndim == 2 and dim in ds[bounds].dims:
        b = ds[bounds].variable.transpose(dim, ...)
        if _has_units(b, reference) and not _AS.match(str(b.attrs.get("units", ""))):
            mid = np.asarray(b.values, dtype=np.float64).mean(axis=1)
            found.append((f"{bounds} midpoints", xr.Variable((dim,), mid, b.attrs)))
    return found


def _time_on_dimension(ds: xr.Dataset, name: str, source: str, reference: str | None) -> tuple[xr.Dataset, str]:
    """For a time coordinate without usable units (NEMO's time_counter): ``ds`` with the times of the variable
    along its dimension that has them (NEMO's time_centered) as the time coordinate, logged; candidates that
    disagree are an error naming them and the config key. Unchanged where there is none."""
    found = _time_candidates(ds, name, reference)
    if not found:
        return ds, name
    dim, (cname, var) = ds[name].dims[0], found[0]
    if len(found) > 1:
        times = [_decoded(v, c, source, reference) for c, v in found]
        seconds = [time_seconds(t) for t in times]
        if any(s.shape != seconds[0].shape or not np.allclose(s, seconds[0], rtol=0, atol=1.0) for s in seconds[1:]):
            each = ", ".join(f"{c!r} ({_span_of(t)})" for (c, _), t in zip(found, times, strict=True))
            msg = (
                f"{source}: time coordinate {name!r} has no usable units, and the variables along its dimension "
                f"{dim!r} that have them disagree: {each}; set {TIME_KEY} to the one that holds the data's times "
                f"(e.g. time_centered for means over each step, time_instant for instantaneous values)"
            )
            raise DataError(msg)
    own = ds[name].attrs.get("units")
    log.info(
        "%s: time coordinate %r has %s; its times are read from %r (units '%s') along the same dimension %r%s",
        source,
        name,
        f"units {own!r}" if own else "no units",
        cname,
        var.attrs.get("units"),
        dim,
        f" (agreeing with {[c for c, _ in found[1:]]})" if len(found) > 1 else "",
    )
    if cname not in ds.variables:  # the midpoints of its bounds
        attrs = {**ds[name].attrs, **{k: var.attrs[k] for k in ("units", "calendar") if k in var.attrs}}
        return ds.assign_coords({name: xr.Variable((dim,), var.values, attrs)}), name
    return _use_time(ds, dim, cname, [name, *(c for c, _ in found)]), cname


def _named_time(ds: xr.Dataset, name: str | None, source: str, coordinate: str) -> tuple[xr.Dataset, str]:
    """``ds`` with the variable named in ``data.source.coordinates.time`` as its time coordinate."""
    dim = ds[name].dims[0] if name is not None else None
    var = ds.variables.get(coordinate)
    if var is None or var.ndim != 1 or (dim is not None and var.dims[0] != dim):
        along = sorted(str(n) for n, v in ds.variables.items() if v.ndim == 1 and (dim is None or v.dims[0] == dim))
        seen = "not a variable of the file" if var is None else f"on dims {var.dims}"
        where = f"along its time dimension {dim!r}" if dim is not None else ""
        msg = f"{source}: {TIME_KEY} = {coordinate!r} is {seen}; the 1-D variables {where}: {along}"
        raise DataError(msg)
    dim = var.dims[0]
    if coordinate == dim:
        return ds, coordinate
    log.info("%s: time read from %r (named in %s), along dimension %r", source, coordinate, TIME_KEY, dim)
    others = [c for c, _ in _time_candidates(ds, name, None)] if name is not None else []
    return _use_time(ds, dim, coordinate, [dim, *([name] if name else []), *others]), coordinate


def _use_time(ds: xr.Dataset, dim: str, cname: str, replaced: list[str]) -> xr.Dataset:
    """``ds`` with the 1-D variable ``cname`` as the coordinate of dimension ``dim`` (renamed ``cname``); the
    time variables it replaces (``replaced``) are dropped, so that one time coordinate remains."""
    ds = ds.drop_vars([c for c in replaced if c != cname and c in ds.variables])
    ds = ds if cname in ds.coords else ds.set_coords(cname)
    return ds.swap_dims({dim: cname})


def _decoded(var: xr.Variable, name: str, source: str, reference: str | None) -> np.ndarray:
    units = _time_units(var, source, name, reference)
    return np.asarray(_decode_variable(var, units, _calendar(var.attrs, source, name), source, name).values)


def _span_of(t: np.ndarray) -> str:
    return f"{format_time(t[0])} .. {format_time(t[-1])}" if t.size else "empty"


def calendar_of(times: np.ndarray) -> str:
    """The canonical calendar of decoded times: 'standard' for datetime64, else the cftime calendar."""
    t = np.asarray(times)
    if t.dtype.kind == "M" or t.size == 0:
        return "standard"
    return CALENDARS.get(t.flat[0].calendar, t.flat[0].calendar)


def time_seconds(times: np.ndarray) -> np.ndarray:
    """Seconds since 1970-01-01 in the times' own calendar (float64): comparable, subtractable numbers."""
    t = np.asarray(times)
    if t.dtype.kind == "M":
        return (t - np.datetime64("1970-01-01")) / np.timedelta64(1, "s")
    if t.size == 0:
        return np.zeros(t.shape)
    first = t.flat[0]
    out = cftime.date2num(
        t.ravel(), "seconds since 1970-01-01", calendar=first.calendar, has_year_zero=first.has_year_zero
    )
    return np.asarray(out, dtype=np.float64).reshape(t.shape)


def format_time(t: Any) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` for a datetime64 or cftime value (a 360_day date may be the 30th of February)."""
    if isinstance(t, cftime.datetime):
        return t.strftime("%Y-%m-%dT%H:%M:%S")
    return str(np.datetime_as_string(np.datetime64(t, "s"), unit="s"))


def day_of_year(times: np.ndarray) -> np.ndarray:
    """Day of year as float32 on a 365.25-day year, in any calendar.

    ``1 + (days since 1 January, with the fraction of the day) / (days in the calendar's year) * 365.25``:
    1 January 00:00 is 1.0 and the year ends at 366.25 in every calendar, so the model's
    annual harmonics (``2 pi doy k / 365.25``, :mod:`pipeline.diffusion.unet`) see one full cycle
    per year, also for 360-day and 366-day years.
    """
    t = np.asarray(times).ravel()
    if t.dtype.kind == "M":
        idx = pd.DatetimeIndex(t)
        frac = (idx - idx.normalize()) / pd.Timedelta(days=1)
        elapsed = np.asarray(idx.day_of_year - 1 + frac, dtype=np.float64)
        length = np.where(idx.is_leap_year, 366.0, 365.0)
    else:
        lengths: dict[tuple[str, int], float] = {}
        elapsed = np.empty(t.size)
        length = np.empty(t.size)
        for i, d in enumerate(t):
            key = (d.calendar, d.year)
            if key not in lengths:
                jan1 = cftime.datetime(d.year, 1, 1, calendar=d.calendar, has_year_zero=d.has_year_zero)
                lengths[key] = ((jan1.replace(year=d.year + 1)) - jan1).days
            elapsed[i] = d.dayofyr - 1 + (d.hour * 3600 + d.minute * 60 + d.second + d.microsecond / 1e6) / 86400
            length[i] = lengths[key]
    return (1.0 + elapsed / length * 365.25).astype(np.float32).reshape(np.shape(times))


def _day_bound(d: dt.date, calendar: str, has_year_zero: bool, after: bool) -> cftime.datetime:
    """Start of day ``d`` (or of the day after it) in ``calendar``; a day the calendar lacks (31 December in
    360_day) is taken as past the end of its month."""
    first = cftime.datetime(d.year, d.month, 1, calendar=calendar, has_year_zero=has_year_zero)
    if d.day > first.daysinmonth:
        return first.replace(day=first.daysinmonth) + dt.timedelta(days=1)
    return first.replace(day=d.day) + dt.timedelta(days=int(after))


def in_period(times: np.ndarray, first: dt.date, last: dt.date) -> np.ndarray:
    """Whether each time lies in the days ``first`` .. ``last`` (inclusive), in the times' own calendar.

    The end bound is the start of the day after ``last``, counted in that calendar (360_day:
    2000-02-30 + 1 day = 2000-03-01). A day the calendar lacks (31 December in 360_day) lies past the
    end of its month.
    """
    t = np.asarray(times)
    if t.size == 0:
        return np.zeros(t.shape, dtype=bool)
    if t.dtype.kind == "M":
        lo, hi = np.datetime64(first), np.datetime64(last) + np.timedelta64(1, "D")
    else:
        d = t.flat[0]
        lo = _day_bound(first, d.calendar, d.has_year_zero, after=False)
        hi = _day_bound(last, d.calendar, d.has_year_zero, after=True)
    return np.asarray((t >= lo) & (t < hi), dtype=bool)


def regular_times(times: np.ndarray, start: Any, n: int) -> np.ndarray:
    """``n`` times from ``start`` at the step of the axis ``times``, beyond its end if need be.

    An axis of whole calendar months (every time on the same day and hour: monthly or one season per
    year) steps by months in its calendar; any other axis by its median step.
    """
    t = np.asarray(times)
    is_np = t.dtype.kind == "M"
    if t.size > 1:
        parts = pd.DatetimeIndex(t) if is_np else None
        fields = (
            [(x.year, x.month, x.day, x.hour, x.minute, x.second) for x in parts]
            if parts is not None
            else [(x.year, x.month, x.day, x.hour, x.minute, x.second) for x in t]
        )
        months = np.diff([y * 12 + m for y, m, *_ in fields])
        if len({f[2:] for f in fields}) == 1 and months[0] > 0 and np.all(months == months[0]):
            k = int(months[0])
            if is_np:
                s = pd.Timestamp(start)
                return np.array([s + pd.DateOffset(months=k * i) for i in range(n)], dtype="datetime64[ns]")
            return np.array([_add_months(start, k * i) for i in range(n)], dtype=object)
        step = float(np.median(np.diff(time_seconds(t))))
    else:
        step = 86400.0
    if is_np:
        return np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(round(step * 1e9), "ns")
    return np.array([start + dt.timedelta(seconds=step * i) for i in range(n)], dtype=object)


def _span(name: str, t: np.ndarray) -> str:
    return f"{name} ({format_time(t[0])} .. {format_time(t[-1])})"


class _Part(NamedTuple):
    """One input file's dataset with its time coordinate's name, values and seconds."""

    name: str
    ds: xr.Dataset
    tname: str
    t: np.ndarray
    s: np.ndarray


def check_time_axes(parts: list[tuple[str, xr.Dataset]], overlap: str = "error") -> list[xr.Dataset]:
    """Check that decoded per-file datasets (of the same variables) form one time axis; return them in time order.

    Each file's time must increase; all files share one calendar. Overlapping files (a file's first time
    not after the previous file's last) are an error, or with ``overlap="later_wins"`` the earlier
    file's overlapping steps are dropped. A gap between files (more than 1.5 x the largest step inside
    either file; a file of one step uses the other's) is an error: a file is missing.
    """
    if overlap not in ("error", "later_wins"):
        msg = f"data.source.overlap must be 'error' or 'later_wins', got {overlap!r}"
        raise DataError(msg)
    items = _timed_parts(parts)
    _check_one_calendar(items)
    items.sort(key=lambda it: (it.s[0], it.s[-1]))
    out = items[:1]
    for item in items[1:]:
        prev = _resolve_overlap(out[-1], item, overlap)
        if prev is None:  # the later file holds every step of the earlier one
            out[-1] = item
            continue
        out[-1] = prev
        _check_gap(prev, item)
        out.append(item)
    return [it.ds for it in out]


def _timed_parts(parts: list[tuple[str, xr.Dataset]]) -> list[_Part]:
    """The files with their times (files without time steps left out, logged); time must increase in each."""
    items = []
    for name, ds in parts:
        tname = find_time(ds)
        if tname is None:
            msg = f"{name}: no time coordinate, unlike the other files {[n for n, _ in parts if n != name]}"
            raise DataError(msg)
        t = ds[tname].values
        if t.size == 0:
            log.warning("%s: no time steps; left out", name)
            continue
        s = time_seconds(t)
        if t.size > 1 and not np.all(np.diff(s) > 0):
            i = int(np.argmax(np.diff(s) <= 0))
            msg = f"{name}: time does not increase ({format_time(t[i])}, {format_time(t[i + 1])} at position {i})"
            raise DataError(msg)
        items.append(_Part(name, ds, tname, t, s))
    return items


def _check_one_calendar(items: list[_Part]) -> None:
    """Files in different calendars cannot share a time axis: converting one silently would move dates."""
    cals = {calendar_of(it.t) for it in items}
    if len(cals) > 1:
        each = ", ".join(f"{it.name}: {calendar_of(it.t)}" for it in items)
        msg = f"input files use different calendars ({each}); convert them to one calendar first"
        raise DataError(msg)


def _resolve_overlap(prev: _Part, item: _Part, overlap: str) -> _Part | None:
    """``prev`` without the steps ``item`` (the later file) also holds: unchanged where they do not overlap,
    None where none is left. An overlap is an error unless ``overlap`` is ``later_wins``."""
    if not item.s[0] <= prev.s[-1]:  # no overlap (written so that a NaN time never overlaps)
        return prev
    if prev.s[-1] > item.s[-1]:
        msg = f"{_span(prev.name, prev.t)} contains all of {_span(item.name, item.t)}; remove one of them"
        raise DataError(msg)
    keep = prev.s < item.s[0]
    if overlap == "error":
        msg = (
            f"{_span(prev.name, prev.t)} and {_span(item.name, item.t)} overlap by {int((~keep).sum())} steps; "
            "set data.source.overlap: later_wins to let the later file win"
        )
        raise DataError(msg)
    log.warning("%s: %d steps overlap %s; the later file wins", prev.name, int((~keep).sum()), item.name)
    if not keep.any():
        return None
    ds = prev.ds.isel({prev.ds[prev.tname].dims[0]: np.flatnonzero(keep)})
    return _Part(prev.name, ds, prev.tname, prev.t[keep], prev.s[keep])


def _check_gap(prev: _Part, item: _Part) -> None:
    """A gap of more than 1.5 x the largest step inside either file means a file is missing."""
    ps, s = prev.s, item.s
    steps = [float(np.max(np.diff(x))) for x in (ps, s) if x.size > 1]
    if steps and s[0] - ps[-1] > 1.5 * max(steps):
        msg = (
            f"time steps are missing between {_span(prev.name, prev.t)} and {_span(item.name, item.t)}: nothing from "
            f"{format_time(prev.t[-1])} to {format_time(item.t[0])} ({(s[0] - ps[-1]) / 86400:g} days, while steps "
            f"inside the files are at most {max(steps) / 86400:g} days); add the file that holds them to "
            "data.source.paths"
        )
        raise DataError(msg)


_YEAR = 365.25  # day_of_year() puts every calendar on a 365.25-day year


def climatology_candidates(
    times: np.ndarray, train: np.ndarray, targets: np.ndarray, window_days: float
) -> tuple[list[np.ndarray], float]:
    """For each target time index, the training time indices whose day of year lies within the window
    (circular distance), and the window used: ``max(window_days, half the median time step)``, so data
    with one step per year (or season) gets every training year instead of nothing."""
    step_days = float(np.median(np.diff(time_seconds(times)))) / 86400 if times.size > 1 else 1.0
    half = max(float(window_days), step_days / 2)
    doy_train = day_of_year(times[train]).astype(np.float64)
    doy_target = day_of_year(times[targets]).astype(np.float64)
    d = np.abs(doy_target[:, None] - doy_train[None, :]) % _YEAR
    d = np.minimum(d, _YEAR - d)
    return [train[row <= half + 1e-6] for row in d], half
