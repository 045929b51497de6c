# Sample generation from the best checkpoint of the sweep (or the one named in sample.checkpoint).
# With sample.processes > 1 the stage submits its own multi-process (multi-GPU) job through submitit,
# like training, so the rule then runs where Snakemake runs.

if CFG.sample.processes > 1:

    localrules:
        sample_model,


rule sample_model:
    input:
        best=BEST,
        final=FINAL,
    output:
        report(
            directory(SAMPLES),
            patterns=["{name}.png", "{name}.gif"],
            caption="../report/samples.rst",
            category="Samples",
        ),
    log:
        LOG("sample_model"),
    benchmark:
        BENCHMARK("sample_model")
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=CONFIG_FILE,
        settings=settings("sample", "evaluate.context_frames", "seed"),
        launch=settings("launch") if CFG.sample.processes > 1 else "",
    shell:
        "python -m pipeline sample --config {params.config:q} > {log:q} 2>&1"


# The forced response (experiments with data.forcings): each run's held-out periods generated under
# its own forcing, against the real run and pattern scaling (pipeline/scenarios.py).
rule response:
    input:
        best=BEST,
        final=FINAL,
    output:
        directory(RESPONSE),
    log:
        LOG("response"),
    benchmark:
        BENCHMARK("response")
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=CONFIG_FILE,
        settings=settings("sample", "evaluate.context_frames", "data.forcings", "seed"),
    shell:
        "python -m pipeline response --config {params.config:q} > {log:q} 2>&1"
