# MLflow: push the runs logged offline (tracking.mode offline, or auto on a node without a route to
# the server) to tracking.uri. It runs where Snakemake runs (the login node, which reaches the server),
# and has no output: ask for it by name, `snakemake sync_mlflow`. It sends only what the server lacks.


localrules:
    sync_mlflow,


rule sync_mlflow:
    log:
        LOG("sync_mlflow"),
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline mlflow-sync --config {params.config:q} > {log:q} 2>&1"
