"""The results layout: the paths every stage agrees on, and which checkpoints exist to be evaluated.

A mixin of :class:`pipeline.config.schema.Config` (``cfg.exp_dir``, ``cfg.eval_checkpoints()``, ...), kept
apart from the schema because it says where things go, not what a setting may be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import checkpoints
from pipeline.config.base import ConfigError

if TYPE_CHECKING:
    from pipeline.config.schema import DistillConfig, EvaluateConfig, TrackingConfig, TrainConfig

__all__ = ["ResultsLayout"]


class ResultsLayout:
    """Paths under ``<results_dir>/<experiment>/`` and the checkpoint selections derived from the settings."""

    if TYPE_CHECKING:  # fields of Config (declared here for type checkers only, not pydantic fields)
        experiment: str
        results_dir: str
        train: TrainConfig
        evaluate: EvaluateConfig
        distill: DistillConfig
        tracking: TrackingConfig

    @property
    def exp_dir(self) -> Path:
        return Path(self.results_dir) / self.experiment

    @property
    def data_dir(self) -> Path:
        return self.exp_dir / "data"

    @property
    def regridded_path(self) -> Path:
        return self.data_dir / "regridded.zarr"

    @property
    def normalised_path(self) -> Path:
        return self.data_dir / "normalised.zarr"

    @property
    def stats_path(self) -> Path:
        return self.data_dir / "stats.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.exp_dir / "checkpoints"

    @property
    def final_checkpoint(self) -> Path:
        return self.checkpoint_dir / "final.pt"

    @property
    def eval_dir(self) -> Path:
        return self.exp_dir / "eval"

    def eval_point(self, split: str, checkpoint: str, sampler: str, steps: int) -> Path:
        """A sweep point's scores on the ``split`` clips: ``eval/<split>/<checkpoint>/<sampler>-<steps>.json``."""
        return self.eval_dir / split / checkpoint / f"{sampler}-{steps}.json"

    def eval_references(self, split: str) -> Path:
        """The reference forecasts' scores on the ``split`` clips: ``eval/<split>/references.json``."""
        return self.eval_dir / split / "references.json"

    def eval_out(self, students: bool = False) -> Path:
        """Where a collection goes: ``eval/`` (the sweep), ``eval/distilled/`` (the sweep and the students)."""
        return self.eval_dir / "distilled" if students else self.eval_dir

    def eval_selection(self, students: bool = False) -> Path:
        """The choice made on validation (``selection.json``) and the points it sends to the test clips."""
        return self.eval_out(students) / "selection.json"

    def eval_best(self, students: bool = False) -> Path:
        """``best.json``: the point chosen on validation, with its test scores."""
        return self.eval_out(students) / "best.json"

    def eval_reports(self, students: bool = False) -> dict[str, Path]:
        """What collect-eval writes beside ``best.json``: the table (``csv``, ``parquet``), the sweep's summary plot
        (``plot``), the scorecard and, where the sweep judged the climate, its panel (``climate``)."""
        out = self.eval_out(students)
        return {"csv": out / "summary.csv", "parquet": out / "summary.parquet", "plot": out / "summary.png",
                "scorecard": out / "scorecard.png", "climate": out / "climate.png"}  # fmt: skip

    def read_best(self, key: str, setting: str, default: Any = None) -> Any:
        """``key`` of ``eval/best.json`` (the point chosen on validation), the one reader of that file; ``setting``
        (``sample.checkpoint``, ...) is named in the error where the sweep has not run; ``default`` for a key that
        a best.json from an older version lacks."""
        path = self.eval_best()
        if not path.exists():
            msg = f"{setting} = 'best' needs {path} (run the evaluation sweep first) or give a value"
            raise ConfigError(msg)
        best = json.loads(path.read_text())
        if key not in best and default is None:
            msg = f"{path} has no {key!r}: rerun collect-eval"
            raise ConfigError(msg)
        return best.get(key, default)

    @property
    def samples_dir(self) -> Path:
        return self.exp_dir / "samples"

    @property
    def distill_dir(self) -> Path:
        return self.exp_dir / "distill"

    @property
    def response_dir(self) -> Path:
        """The response stage's folder (``response.json``, ``response_<variable>.png``)."""
        return self.exp_dir / "response"

    def log_file(self, job: str) -> Path:
        """A workflow job's log: ``logs/<job>.log`` (``job`` may hold folders and wildcards)."""
        return self.exp_dir / "logs" / f"{job}.log"

    def benchmark_file(self, job: str) -> Path:
        """A workflow job's time and memory (Snakemake's benchmark): ``benchmarks/<job>.tsv``."""
        return self.exp_dir / "benchmarks" / f"{job}.tsv"

    def inference_file(self, name: str) -> Path:
        """The inference file of checkpoint ``name`` (``step-00000300``, or a distilled student ``student-0004``):
        see :mod:`pipeline.checkpoints`."""
        if checkpoints.is_student(name):
            return checkpoints.student_path(self.distill_dir, checkpoints.student_steps(name))
        return checkpoints.inference_path(self.checkpoint_dir, name)

    def student_points(self) -> list[tuple[str, str, int]]:
        """The distilled students' sweep points ``(student-NNNN, distilled, NNNN)``; none unless distill.enabled."""
        if not self.distill.enabled:
            return []
        return [(checkpoints.student_name(n), checkpoints.STUDENT_SAMPLER, n) for n in self.distill.rounds]

    def kept_checkpoints(self) -> list[str]:
        """Checkpoint tags that exist after training (saved every checkpoint_every and at the end, then pruned)."""
        t = self.train
        saved = {*range(t.checkpoint_every, t.steps + 1, t.checkpoint_every), t.steps}
        return [checkpoints.tag(s) for s in checkpoints.kept_steps(saved, t.keep_last, t.keep_every)]

    def eval_checkpoints(self) -> list[str]:
        """The checkpoints of the evaluation sweep; an unknown step is a config error."""
        kept = self.kept_checkpoints()
        sel = self.evaluate.checkpoints
        if sel == "all":
            return kept
        if isinstance(sel, str):  # 'last' or 'last N' (validated)
            n = int(sel.split()[1]) if " " in sel else 1
            return kept[-n:]
        tags = [checkpoints.tag(s) for s in sel]
        missing = [t for t in tags if t not in kept]
        if missing:
            msg = f"evaluate.checkpoints: {missing} will not exist after training; kept checkpoints are {kept}"
            raise ConfigError(msg)
        return tags

    @property
    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{(Path(self.results_dir) / 'mlflow.db').resolve()}"
