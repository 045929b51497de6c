# Evaluation sweep: one job per (checkpoint, sampler, steps) point, then one collecting job.


rule evaluate_checkpoint:
    input:
        final=f"{EXP}/checkpoints/final.pt",
        stats=f"{EXP}/data/stats.json",
    output:
        f"{EXP}/eval/{{checkpoint}}/{{sampler}}-{{steps}}.json",
    log:
        f"{EXP}/logs/evaluate/{{checkpoint}}/{{sampler}}-{{steps}}.log",
    benchmark:
        f"{EXP}/benchmarks/evaluate/{{checkpoint}}/{{sampler}}-{{steps}}.tsv"
    wildcard_constraints:
        checkpoint=r"step-\d+",
        sampler="ancestral|ddim|dpmpp_2m",
        steps=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=CONFIG_FILE,
        settings=settings(
            "evaluate.guidance_weights",
            "evaluate.context_frames",
            "evaluate.ensemble",
            "evaluate.test_clips",
            "seed",
        ),
    shell:
        "python -m pipeline evaluate --config {params.config} --checkpoint {wildcards.checkpoint}"
        " --sampler {wildcards.sampler} --steps {wildcards.steps} > {log} 2>&1"


rule collect_evaluation:
    input:
        EVAL_POINTS,
    output:
        csv=f"{EXP}/eval/summary.csv",
        parquet=f"{EXP}/eval/summary.parquet",
        best=f"{EXP}/eval/best.json",
        plot=f"{EXP}/eval/summary.png",
    log:
        f"{EXP}/logs/collect_evaluation.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings("evaluate.primary_metric"),
    shell:
        "python -m pipeline collect-eval --config {params.config} > {log} 2>&1"
