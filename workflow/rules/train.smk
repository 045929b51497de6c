# Training: the rule runs where Snakemake runs and waits; the GPU job itself is submitted by
# submitit (pipeline/launch.py) with nodes/GPUs from config.launch, so it is a local rule.
# Snakemake sets OMP_NUM_THREADS to a rule's threads (1 here), and the job inherits it: unset, each
# task takes its share of the CPUs it may use (pipeline.launch.cpu_threads: launch.cpus_per_task on SLURM).


localrules:
    train_model,


rule train_model:
    input:
        store=NORMALISED,
        stats=STATS,
    output:
        FINAL,
    log:
        LOG("train_model"),
    benchmark:
        BENCHMARK("train_model")
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings("model", "diffusion", "train", "launch", "seed"),
    shell:
        "env -u OMP_NUM_THREADS python -m pipeline train --config {params.config:q} > {log:q} 2>&1"
