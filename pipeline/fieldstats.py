"""The figures of a set of gridded sequences, accumulated a block of frames at a time (issue 28 item 4).

A set is (case, frame, latitude, longitude): a few generated clips or rollouts held in memory, or a real period of
decades read lazily from the store. :func:`summarise` reads it in blocks of at most :data:`BLOCK_BYTES` (float64)
and keeps only what the figures need, so the peak memory of the realism and climate figures depends on the grid,
not on the length of the period:

- per-cell count, mean and sum of squared deviations (Chan et al.'s pairwise merge of the blocks' moments), from
  which the mean and standard deviation maps (ddof 0, NaNs skipped) and the pooled cos-latitude-weighted standard
  deviation of every value (``numpy.cov`` with ``aweights``, as before) follow exactly;
- the lag-k autocorrelation of the anomalies about the set's own mean map (:func:`pipeline.metrics.autocorrelation`:
  pairs inside one sequence, the last frames of a block carried into the next), exact;
- the zonal power spectrum (:class:`pipeline.metrics.RunningSpectrum`), exact; the minimum and maximum; the area
  mean and spatial spread of every field (the drift curves, a number per field);
- the distribution of the values (cos-latitude weights): a set of at most :data:`EXACT_VALUES` values keeps them
  (quantiles ``inverted_cdf`` and Wasserstein-1 by scipy, exactly as before); a larger one keeps a histogram of
  :data:`BINS` bins over its range, whose quantiles and Wasserstein-1 are those of the values spread uniformly in
  their bin: each moves by less than a bin width (the ``w1_error_bound`` of :func:`compare` says how much);
- the leading EOFs (sqrt(cos latitude) weights, anomalies about the mean map, cells valid in every field of the
  set): of the data by the ``eofs`` package where the set is small, else by block subspace iteration on the
  weighted covariance (Halko, Martinsson & Tropp's randomized range finder with power iterations and a Rayleigh-Ritz
  step after each product, until no leading pattern moves by more than :data:`EOF_TOLERANCE`; tested against
  ``eofs``), with the explained-variance fractions over the covariance's trace.

A large real period is read twice (moments; values, autocorrelation and the first EOF product), plus once per
further product with the covariance (2 to :data:`EOF_MAX_PRODUCTS` - 1; none without EOFs); a small one once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from eofs.standard import Eof
from scipy.stats import wasserstein_distance

from pipeline import metrics
from pipeline.data.stats import area_weights

__all__ = [
    "BINS",
    "BLOCK_BYTES",
    "EXACT_VALUES",
    "Distribution",
    "Eofs",
    "SetSummary",
    "field_curves",
    "summarise",
    "wasserstein1",
]

BLOCK_BYTES = 64 * 2**20  # float64 bytes of one block read from a set
EXACT_VALUES = 1 << 22  # a set of at most this many values (32 MB in float64) keeps them: exact figures
BINS = 1 << 16  # histogram bins over a larger set's range: the quantiles and W1 move by less than range / BINS
log = logging.getLogger(__name__)

EOF_OVERSAMPLE = 16  # extra directions of the subspace iteration beyond the modes asked
EOF_TOLERANCE = 1e-8  # the iteration stops once no mode's pattern moves by more (1 - |correlation|)
EOF_MAX_PRODUCTS = 10  # products with the covariance at most (each after the first is one more pass over the set)


@dataclass(frozen=True)
class Distribution:
    """Cos-latitude weighted values: exact (``values`` sorted with their ``weights``) or binned (``weights`` per
    bin between ``edges``, the values spread uniformly inside their bin)."""

    weights: np.ndarray
    values: np.ndarray | None = None
    edges: np.ndarray | None = None

    @property
    def resolution(self) -> float:
        """How far a quantile or the distance may move from the exact values' (0 for exact values)."""
        return 0.0 if self.edges is None else float(self.edges[1] - self.edges[0])

    def quantiles(self, qs: Sequence[float]) -> np.ndarray:
        if self.values is not None:
            return np.quantile(self.values, qs, weights=self.weights, method="inverted_cdf")
        u, x = self.quantile_function()
        return np.interp(np.asarray(qs, dtype=np.float64), u, x)

    def quantile_function(self) -> tuple[np.ndarray, np.ndarray]:
        """The quantile function as points (u, x), linear between them: steps for exact values (two points per
        value), straight inside each bin for a histogram."""
        cum = np.concatenate([[0.0], np.cumsum(self.weights)])
        cum /= cum[-1]
        if self.values is None:
            return cum, np.asarray(self.edges, dtype=np.float64)
        return np.repeat(cum, 2)[1:-1], np.repeat(self.values, 2)


def wasserstein1(a: Distribution, b: Distribution) -> float:
    """Wasserstein-1 distance of two distributions: scipy's for exact values, else the integral of the distance
    between their quantile functions (exact for the piecewise-linear functions, see :meth:`Distribution.quantile_function`)."""
    if a.values is not None and b.values is not None:
        return float(wasserstein_distance(a.values, b.values, a.weights, b.weights))
    (ua, xa), (ub, xb) = a.quantile_function(), b.quantile_function()
    u = np.unique(np.concatenate([ua, ub]))
    du = np.diff(u)
    # both functions are straight inside every interval of the merged grid: the difference at its two ends from
    # two interior points (np.interp is exact there, away from the jumps at the grid's points)
    m1, m2 = u[:-1] + du / 4, u[:-1] + 3 * du / 4
    d1, d2 = np.interp(m1, ua, xa) - np.interp(m1, ub, xb), np.interp(m2, ua, xa) - np.interp(m2, ub, xb)
    left, right = 1.5 * d1 - 0.5 * d2, 1.5 * d2 - 0.5 * d1
    same = left * right >= 0
    mag = np.abs(left) + np.abs(right)
    crossing = np.divide(left**2 + right**2, 2 * mag, out=np.zeros_like(mag), where=mag > 0)
    return float(np.sum(du * np.where(same, mag / 2, crossing)))


@dataclass(frozen=True)
class Eofs:
    """Leading EOFs (mode, cells valid in the set) as unit vectors in sqrt(cos latitude)-weighted space, their
    explained-variance fractions, the cells (flat indices of the grid) they cover, and whether they converged
    (False: the subspace iteration stopped at :data:`EOF_MAX_PRODUCTS` with a pattern still moving by more than
    :data:`EOF_TOLERANCE`, as it does where the leading modes are barely separated)."""

    patterns: np.ndarray
    fractions: np.ndarray
    cells: np.ndarray
    converged: bool = True


@dataclass(frozen=True)
class SetSummary:
    """What the realism and climate figures need of one set (see the module's docstring)."""

    fields: int  # case x frame
    frames: int  # frames per sequence
    mean: xr.DataArray  # (latitude, longitude) maps, NaN where a cell has no value
    std: xr.DataArray
    pooled_std: float
    distribution: Distribution
    autocorrelation: list[float]  # at the lags summarise was given
    spectrum: xr.DataArray | None  # None where a field has a NaN cell
    minimum: float
    maximum: float
    area_mean: np.ndarray  # per field, case-major (the drift curves)
    spread: np.ndarray
    eofs: Eofs | None

    @property
    def complete(self) -> bool:
        """No NaN anywhere (then the set has a spectrum)."""
        return self.spectrum is not None


def _curves(block: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area mean and area-weighted spatial standard deviation of each field of a (field, lat, lon) block (NaN
    cells skipped; NaN for a field without a value)."""
    ok = np.isfinite(block)
    bw = np.where(ok, w, 0.0)
    total = bw.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (np.where(ok, block, 0.0) * bw).sum(axis=(1, 2)) / total
        sd = np.sqrt((np.where(ok, block - m[:, None, None], 0.0) ** 2 * bw).sum(axis=(1, 2)) / total)
    return m, sd


def field_curves(series: xr.DataArray, block_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Area mean and spatial spread of every field of a (time, lat, lon) series (or (case, frame, lat, lon) set,
    case-major), read a block at a time."""
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    seq = _as_sequences(series)
    w = area_weights(seq["latitude"]).values[:, None] * np.ones(seq.sizes["longitude"])
    per_block = max(1, int(block_bytes // (8 * w.size)))
    parts = [_curves(block, w) for _, block in _blocks(seq, per_block)]
    if not parts:
        return np.empty(0), np.empty(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _as_sequences(data: xr.DataArray) -> xr.DataArray:
    """(time, lat, lon) as one sequence, else (case, frame, lat, lon) as given."""
    if "case" not in data.dims:
        data = data.rename({"time": "frame"}).expand_dims("case")
    return data.transpose("case", "frame", "latitude", "longitude")


def _blocks(seq: xr.DataArray, frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """(case, block (frame, lat, lon) in float64) in the sequences' order, reading ``frames`` frames at a time."""
    for c in range(seq.sizes["case"]):
        one = seq.isel(case=c)
        for s in range(0, one.sizes["frame"], frames):
            yield c, np.asarray(one.isel(frame=slice(s, s + frames)).values, dtype=np.float64)


class _Moments:
    """Per-cell count, mean and M2, merged block by block (Chan, Golub & LeVeque)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.n, self.mean, self.m2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)

    def add(self, block: np.ndarray) -> None:
        ok = np.isfinite(block)
        nb = ok.sum(axis=0).astype(np.float64)
        x = np.where(ok, block, 0.0)
        mb = np.divide(x.sum(axis=0), nb, out=np.zeros_like(nb), where=nb > 0)
        m2b = (np.where(ok, block - mb, 0.0) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        frac = np.divide(nb, n, out=np.zeros_like(n), where=n > 0)
        self.mean = self.mean + delta * frac
        self.m2 = self.m2 + m2b + delta**2 * self.n * frac
        self.n = n


def _weighted_std(mom: _Moments, w: np.ndarray) -> float:
    """``sqrt(np.cov(values, aweights=w))`` over every finite value of cells with w > 0, from the per-cell moments."""
    a = np.where(w > 0, w, 0.0) * mom.n
    v1, v2 = a.sum(), (np.where(w > 0, w, 0.0) ** 2 * mom.n).sum()
    if v1 <= 0:
        return float("nan")
    mg = (a * mom.mean).sum() / v1
    s = (np.where(w > 0, w, 0.0) * (mom.m2 + mom.n * (mom.mean - mg) ** 2)).sum()
    return float(np.sqrt(s / (v1 - v2 / v1)))


class _Sketch:
    """C @ q for the covariance C = A^T A of a set's sqrt(cos latitude)-weighted anomalies A (fields x the cells
    valid in every field), accumulated block by block."""

    def __init__(self, cells: np.ndarray, mean: np.ndarray, sw: np.ndarray, q: np.ndarray) -> None:
        self.cells, self.mean, self.sw, self.q = cells, mean, sw, q
        self.product = np.zeros_like(q)

    @classmethod
    def over(cls, mean_map: np.ndarray, valid: np.ndarray, sw: np.ndarray, q: np.ndarray) -> _Sketch:
        cells = np.flatnonzero(valid.ravel())
        return cls(cells, mean_map.ravel()[cells], sw.ravel()[cells], q)

    def again(self, q: np.ndarray) -> _Sketch:
        """The same covariance's product with another ``q``, to accumulate."""
        return _Sketch(self.cells, self.mean, self.sw, q)

    def add(self, block: np.ndarray) -> None:
        a = (block.reshape(block.shape[0], -1)[:, self.cells] - self.mean) * self.sw
        self.product += a.T @ (a @ self.q)


def _start(valid: np.ndarray, modes: int) -> np.ndarray:
    """The subspace iteration's random start (seeded: the same set gives the same EOFs)."""
    cells = int(valid.sum())
    return np.random.default_rng(0).standard_normal((cells, min(modes + EOF_OVERSAMPLE, cells)))


def _subspace_eofs(seq: xr.DataArray, frames: int, first: _Sketch, modes: int, trace: float) -> Eofs:
    """The leading EOFs of a large set by block subspace iteration on the covariance, from its product with the
    random start (``first``, made in the second pass): one more pass over the blocks per product."""

    def product(q: np.ndarray) -> np.ndarray:
        sketch = first.again(q)
        for _, block in _blocks(seq, frames):
            sketch.add(block)
        return sketch.product

    q, previous, converged = np.linalg.qr(first.product)[0], None, False
    for _ in range(EOF_MAX_PRODUCTS - 1):
        z = product(q)
        lam, vec = np.linalg.eigh(q.T @ z)  # Rayleigh-Ritz on the current subspace
        order = np.argsort(lam)[::-1][:modes]
        patterns = (q @ vec[:, order]).T
        patterns /= np.linalg.norm(patterns, axis=1, keepdims=True)
        if previous is not None and (1 - np.abs((patterns * previous).sum(axis=1))).max() < EOF_TOLERANCE:
            converged = True
            break
        previous, q = patterns, np.linalg.qr(z)[0]
    if not converged:
        log.warning("EOFs: the subspace iteration stopped after %d products without converging", EOF_MAX_PRODUCTS)
    return Eofs(patterns, lam[order] / trace, first.cells, converged)


def _small_eofs(data: np.ndarray, valid: np.ndarray, sw: np.ndarray, modes: int) -> Eofs:
    """The leading EOFs of a set held in memory (fields, lat, lon), by the ``eofs`` package."""
    cells = np.flatnonzero(valid.ravel())
    x = data.reshape(data.shape[0], -1)[:, cells]
    solver = Eof(x, weights=sw.ravel()[cells], center=True)
    e = solver.eofs(neofs=modes).reshape(modes, -1)
    e = np.where(np.isfinite(e), e, 0.0)
    return Eofs(e / np.linalg.norm(e, axis=1, keepdims=True), np.asarray(solver.varianceFraction(neigs=modes)), cells)


@dataclass
class _FirstPass:
    """Moments, range, drift curves and spectrum of a set, block by block (and the blocks of a small set)."""

    moments: _Moments
    spectrum: metrics.RunningSpectrum
    lo: float = np.inf
    hi: float = -np.inf

    def __post_init__(self) -> None:
        self.means: list[np.ndarray] = []
        self.spreads: list[np.ndarray] = []
        self.held: list[np.ndarray] = []

    def add(self, block: np.ndarray, w: np.ndarray, template: xr.DataArray, keep: bool) -> None:
        self.moments.add(block)
        finite = block[np.isfinite(block)]
        if finite.size:
            self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))
        m, sd = _curves(block, w)
        self.means.append(m)
        self.spreads.append(sd)
        self.spectrum.add(template.expand_dims(frame=block.shape[0]).copy(data=block))
        if keep:
            self.held.append(block)

    def edges(self) -> np.ndarray:
        """:data:`BINS` bins over the set's range."""
        if not np.isfinite(self.lo):
            return np.linspace(0.0, 1.0, BINS + 1)
        return np.linspace(self.lo, self.hi if self.hi > self.lo else self.lo + 1.0, BINS + 1)


class _SecondPass:
    """The values (or their histogram over ``edges``) and the lag sums of the anomalies about ``mean_map``, pairs
    inside one sequence: the last frames of a block are carried into the next block of the same case."""

    def __init__(
        self,
        mean_map: np.ndarray,
        w: np.ndarray,
        lags: Sequence[int],
        frames: int,
        edges: np.ndarray | None,
        sketch: _Sketch | None = None,
    ):
        self.mean_map, self.w, self.lags, self.frames, self.edges = mean_map, w, list(lags), frames, edges
        self.sketch = sketch
        self.kmax = max([k for k in self.lags if k > 0], default=0)
        self.num, self.den = dict.fromkeys(self.lags, 0.0), 0.0
        self.counts = np.zeros(BINS)
        self.values: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.carry, self.case = np.empty((0, *w.shape)), -1

    def add(self, case: int, block: np.ndarray) -> None:
        w = self.w
        ok = np.isfinite(block) & (w > 0)
        if self.edges is None:
            self.values.append(block[ok])
            self.weights.append(np.broadcast_to(w, block.shape)[ok])
        else:
            self.counts += np.histogram(block[ok], bins=self.edges, weights=np.broadcast_to(w, block.shape)[ok])[0]
        if self.sketch is not None:
            self.sketch.add(block)
        a = np.where(np.isfinite(block), block - self.mean_map, np.nan)
        self.den += float(np.nansum(w * a * a))
        if case != self.case:
            self.carry, self.case = np.empty((0, *w.shape)), case
        z = np.concatenate([self.carry, a])
        for k in self.lags:
            start = max(k, self.carry.shape[0])
            if 0 < k < self.frames and start < z.shape[0]:
                self.num[k] += float(np.nansum(w * z[start:] * z[start - k : z.shape[0] - k]))
        self.carry = z[max(0, z.shape[0] - self.kmax) :] if self.kmax else self.carry

    def distribution(self) -> Distribution:
        if self.edges is not None:
            return Distribution(self.counts, edges=self.edges)
        v = np.concatenate(self.values) if self.values else np.empty(0)
        wt = np.concatenate(self.weights) if self.weights else np.empty(0)
        order = np.argsort(v, kind="stable")
        return Distribution(wt[order], values=v[order])

    def autocorrelation(self) -> list[float]:
        t = self.frames
        return [
            float(self.num[k] / (t - k) / (self.den / t)) if 0 < k < t and self.den > 0 else float("nan")
            for k in self.lags
        ]


def summarise(
    data: xr.DataArray,
    lags: Sequence[int],
    modes: int = 0,
    block_bytes: int | None = None,
    exact_values: int | None = None,
) -> SetSummary:
    """The figures of a set: (case, frame, latitude, longitude) sequences, or one (time, latitude, longitude)
    series, in memory or lazy (dask: each block is read when it is needed). ``modes`` leading EOFs (0: none;
    fewer where the set has too few fields). A set of more than ``exact_values`` values is read in blocks of
    ``block_bytes`` and keeps a histogram of its values instead of the values (defaults: the module's
    :data:`BLOCK_BYTES` and :data:`EXACT_VALUES` at the time of the call)."""
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    exact_values = EXACT_VALUES if exact_values is None else exact_values
    seq = _as_sequences(data)
    (cases, frames), shape = (seq.sizes[d] for d in ("case", "frame")), (seq.sizes["latitude"], seq.sizes["longitude"])
    w = np.broadcast_to(area_weights(seq["latitude"]).values[:, None], shape).astype(np.float64)
    per_block, fields = max(1, int(block_bytes // (8 * shape[0] * shape[1]))), cases * frames
    small, template = fields * shape[0] * shape[1] <= exact_values, seq.isel(case=0, frame=0, drop=True)

    first = _FirstPass(_Moments(shape), metrics.RunningSpectrum())
    for _, block in _blocks(seq, per_block):
        first.add(block, w, template, keep=small)
    mom = first.moments
    empty = mom.n == 0
    # a small set was kept whole (case-major) and is not read again
    whole = np.concatenate(first.held) if small and first.held else np.empty((0, *shape))
    if small:
        edges, blocks = None, ((c, whole[c * frames : (c + 1) * frames]) for c in range(cases))
    else:
        edges, blocks = first.edges(), _blocks(seq, per_block)
    valid, sw = mom.n == fields, np.sqrt(w)
    n_modes = max(1, min(modes, fields - 1)) if modes and valid.any() else 0
    sketch = _Sketch.over(mom.mean, valid, sw, _start(valid, n_modes)) if n_modes and not small else None
    second = _SecondPass(np.where(empty, np.nan, mom.mean), w, lags, frames, edges, sketch)
    for c, block in blocks:
        second.add(c, block)

    eofs = None
    if n_modes and small:
        eofs = _small_eofs(whole, valid, sw, n_modes)
    elif sketch is not None:
        eofs = _subspace_eofs(seq, per_block, sketch, n_modes, float((w * np.where(valid, mom.m2, 0.0)).sum()))

    return _assemble(first, second, eofs, frames, template, w)


def _assemble(
    first: _FirstPass, second: _SecondPass, eofs: Eofs | None, frames: int, template: xr.DataArray, w: np.ndarray
) -> SetSummary:
    mom = first.moments
    empty = mom.n == 0

    def as_map(x: np.ndarray) -> xr.DataArray:  # NaN where a cell has no value
        return template.copy(data=np.where(empty, np.nan, x))

    return SetSummary(
        fields=sum(len(m) for m in first.means),
        frames=frames,
        mean=as_map(mom.mean),
        std=as_map(np.sqrt(np.divide(mom.m2, mom.n, out=np.zeros_like(mom.n), where=mom.n > 0))),
        pooled_std=_weighted_std(mom, w),
        distribution=second.distribution(),
        autocorrelation=second.autocorrelation(),
        spectrum=first.spectrum.value if first.spectrum.complete else None,
        minimum=first.lo,
        maximum=first.hi,
        area_mean=np.concatenate(first.means) if first.means else np.empty(0),
        spread=np.concatenate(first.spreads) if first.spreads else np.empty(0),
        eofs=eofs,
    )
