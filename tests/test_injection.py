"""Issue 25, item 1: nothing from the config runs as shell code. The schema refuses shell metacharacters and control
characters in the results folder and the experiment name, control characters in user paths and SLURM settings, and
sbatch option names that are not option names; and every path or wildcard a rule hands its shell is quoted
(``{params.config:q}``), so a path with a space works and the quoting alone would stop an injection."""

from __future__ import annotations

import ast
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import REPO, pipeline_cli

SNAKEMAKE = shutil.which("snakemake")
assert SNAKEMAKE is not None, "snakemake is a dependency of the project: pip install -e '.[test]'"
CI = ["--configfile", "config/experiments/ci.yaml"]
PWNED = "r$(touch PWNED)"


def _config(work: Path, **override) -> str:
    """``work/bad.yaml``: the default config with ``override`` merged in (one level deep)."""
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in override.items():
        c[key] = {**c[key], **value} if isinstance(value, dict) else value
    (work / "bad.yaml").write_text(yaml.safe_dump(c))
    return "bad.yaml"


def _workflow_copy(dst: Path) -> Path:
    """A copy of the workflow files in ``dst`` (results land in the copy)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


def test_check_config_refuses_a_results_dir_that_would_run_a_command(tmp_path: Path) -> None:
    r = pipeline_cli("check-config", "-c", _config(tmp_path, results_dir=PWNED), cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"- results_dir = {PWNED!r}: must be a folder path without control characters" in r.stderr, r.stderr
    assert "shell metacharacters ($ ` ;" in r.stderr and "spaces" in r.stderr, r.stderr
    assert not (tmp_path / "PWNED").exists()


def test_check_config_refuses_sbatch_options_that_would_add_lines_to_the_job_script(tmp_path: Path) -> None:
    """submitit writes each extra_sbatch item as '#SBATCH --key=value': a newline in the value would start a line
    of the job script of its own (a command), a key with spaces or '=' another option."""
    extra = {"exclusive": "", "mem-per-gpu": "40G", "comment": "x\ntouch PWNED", "mem per gpu": "1", "x=1": "2"}
    cfg = _config(tmp_path, results_dir="results", launch={"extra_sbatch": extra, "partition": "gpu\nrm"})
    r = pipeline_cli("check-config", "-c", cfg, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln.strip() for ln in r.stderr.splitlines()[1:]]
    assert lines == [
        "- launch.partition = 'gpu\\nrm': must be free of control characters (newline, tab, ...)",
        "- launch.extra_sbatch.comment = 'x\\ntouch PWNED': must be free of control characters (newline, tab, ...)",
        "- launch.extra_sbatch.mem per gpu = 'mem per gpu': must be an sbatch long option name without its '--': "
        "ASCII letters, digits, '-' and '_', starting with a letter (e.g. exclusive, mem-per-gpu, constraint)",
        "- launch.extra_sbatch.x=1 = 'x=1': must be an sbatch long option name without its '--': "
        "ASCII letters, digits, '-' and '_', starting with a letter (e.g. exclusive, mem-per-gpu, constraint)",
    ], r.stderr


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ({"results_dir": "a\tb"}, "- results_dir = 'a\\tb': must be a folder path without control characters"),
        ({"results_dir": "out;rm -rf x"}, "- results_dir = 'out;rm -rf x': must be a folder path without control"),
        ({"results_dir": "-rf"}, "- results_dir = '-rf': must be a folder path not starting with '-'"),
        ({"experiment": "e`id`"}, "- experiment = 'e`id`': must be a plain folder name: no '/', spaces"),
        ({"experiment": "e\nx"}, "- experiment = 'e\\nx': must be a plain folder name"),
        ({"data": {"source": {"paths": ["a b.nc", "c\rd.nc"]}}}, "- data.source.paths.1 = 'c\\rd.nc': must be free"),
        ({"tracking": {"uri": "sqlite:///x.db\n"}}, "- tracking.uri = 'sqlite:///x.db\\n': must be free of control"),
    ],
    ids=[
        "results-tab",
        "results-semicolon",
        "results-dash",
        "experiment-backtick",
        "experiment-newline",
        "path-cr",
        "uri",
    ],
)
def test_paths_and_names_are_checked_up_front(override: dict, line: str) -> None:
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config([str(REPO / "config" / "config.yaml"), override])
    (got,) = [ln.strip() for ln in str(e.value).splitlines()[1:]]
    assert got.startswith(line), got


def test_spaces_and_plain_punctuation_pass() -> None:
    from pipeline.config import load_config

    cfg = load_config(
        [
            str(REPO / "config" / "config.yaml"),
            {
                "results_dir": "/scratch/my results/run-1,a=b@c:d%e~f+g",
                "experiment": "z500_v1.2+x",
                "data": {"source": {"paths": ["/data/ERA 5/*.nc", "bundled:eofs/hgt_djf.nc"]}},
                "launch": {"extra_sbatch": {"exclusive": "", "mem-per-gpu": "40G", "gres_flags": "enforce-binding"}},
            },
        ]
    )
    assert str(cfg.exp_dir) == "/scratch/my results/run-1,a=b@c:d%e~f+g/z500_v1.2+x"
    assert cfg.launch.extra_sbatch == {"exclusive": "", "mem-per-gpu": "40G", "gres_flags": "enforce-binding"}


def _shell_commands() -> dict[str, str]:
    """Every rule's shell command template, by rule name, from the Snakefile and workflow/rules/*.smk."""
    commands = {}
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = smk.read_text()
        found = 0
        for block in re.split(r"^(?=(?:rule|checkpoint) \w+:$)", text, flags=re.MULTILINE):
            shell = re.search(r"^    shell:\n((?:        \".*\"\n)+)", block, flags=re.MULTILINE)
            if shell:  # adjacent string literals, as snakefmt lays them out
                commands[block.split()[1].rstrip(":")] = ast.literal_eval(f"({shell[1]})")
                found += 1
        assert found == len(re.findall(r"^\s+shell:", text, flags=re.MULTILINE)), f"{smk}: a shell command not read"
    return commands


def test_every_rule_quotes_what_it_hands_its_shell(tmp_path: Path) -> None:
    """The quoting alone protects, schema aside: each rule's command, formatted as Snakemake formats it with a
    config path, log path and wildcards full of shell syntax, runs (a stand-in `python` that prints its arguments)
    without running any of it, and its program sees each path as one argument, verbatim."""
    from snakemake.utils import format as snakemake_format

    commands = _shell_commands()
    assert {"init_store", "regrid_part", "evaluate_checkpoint", "evaluate_student", "train_model"} <= set(commands)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    (bin_dir / "python").chmod(0o755)
    evil = "my results $(touch PWNED1) `touch PWNED2`; touch PWNED3 & 'x\" {a} * > y"
    folder = tmp_path / evil
    (folder / "logs").mkdir(parents=True)
    for rule, template in commands.items():
        assert not re.search(r"\{(?:params|log|input|output|wildcards)[^}]*?(?<!:q)\}", template), (rule, template)
        log = folder / "logs" / f"{rule}.log"
        cmd = snakemake_format(
            template,
            params=SimpleNamespace(config=str(folder / "config.resolved.yaml")),
            log=[str(log)],
            wildcards=SimpleNamespace(**dict.fromkeys(re.findall(r"\{wildcards\.(\w+)", template), evil)),
        )
        r = subprocess.run(
            ["bash", "-c", cmd], cwd=tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True
        )
        assert r.returncode == 0, (rule, cmd, r.stderr)
        args = log.read_text().splitlines()
        assert args[args.index("--config") + 1] == str(folder / "config.resolved.yaml"), (rule, args)
        assert args.count(evil) == template.count("{wildcards."), (rule, args)  # each wildcard one argument
    assert not list(tmp_path.glob("PWNED*")) and not (tmp_path / "y").exists()


@pytest.mark.workflow
def test_the_workflow_refuses_the_injection_and_quotes_a_path_with_a_space(tmp_path: Path) -> None:
    """snakemake itself: the injecting results_dir fails at parse time (naming the key) and creates nothing; a
    results folder with a space is handed to every rule's command as one quoted word (`snakemake -n -p`)."""
    work = _workflow_copy(tmp_path / "work")
    r = subprocess.run(
        [SNAKEMAKE, "-n", *CI, "--config", f"results_dir={PWNED}"], cwd=work, capture_output=True, text=True
    )
    assert r.returncode != 0 and f"results_dir = {PWNED!r}: must be a folder path" in r.stdout + r.stderr
    assert not (work / "PWNED").exists() and not list(work.glob("r$*"))
    results = tmp_path / "my results"
    r = subprocess.run(
        [SNAKEMAKE, "-n", "-p", *CI, "--config", f"results_dir={results}"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    commands = re.findall(r"^Shell command: (python .*)$", out, flags=re.MULTILINE)  # rule all has none
    exp = results / "eofs-z500-ci"
    assert len(commands) >= 10, out[-3000:]
    for cmd in commands:
        assert f"--config '{exp}/config.resolved.yaml'" in cmd and f"> '{exp}/logs/" in cmd, cmd
    assert any("--part 0001" in c for c in commands) and any("--checkpoint step-00000020" in c for c in commands)


@pytest.mark.workflow
def test_a_results_path_with_spaces_runs_through_the_data_stages(tmp_path: Path) -> None:
    """A real run (the CI config's data stages: init, two part jobs, finalise) from a working directory with a
    space into a results folder with a space: every job runs, logs where its rule says, and MLflow tracks it in
    <results_dir>/mlflow.db."""
    work = _workflow_copy(tmp_path / "work dir")
    results = work / "my results"
    r = subprocess.run(
        [SNAKEMAKE, "--cores", "1", *CI, "--config", f"results_dir={results}", "--until", "finalise_store"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = results / "eofs-z500-ci"
    assert (exp / "data" / "regridded.zarr" / "zarr.json").is_file()
    assert {p.name for p in (exp / "data" / "regridded.parts").iterdir()} >= {"part-0000.done", "part-0001.done"}
    for job in ("init_store", "regrid_part-0000", "regrid_part-0001", "finalise_store"):
        assert (exp / "logs" / f"{job}.log").stat().st_size > 0, job
    with sqlite3.connect(results / "mlflow.db") as db:
        stages = db.execute("SELECT value FROM tags WHERE key = 'pipeline.stage'").fetchall()
    assert ("prepare",) in stages, stages
    assert not [p for p in work.iterdir() if p.name in ("my", "results")]  # nothing split at the space
