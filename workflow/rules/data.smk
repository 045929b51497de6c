# Data stages: raw files -> regridded zarr -> normalised zarr + stats.json


rule regrid_source:
    input:
        [str(p) for p in SOURCE_FILES],
    output:
        directory(f"{EXP}/data/regridded.zarr"),
    log:
        f"{EXP}/logs/regrid_source.log",
    benchmark:
        f"{EXP}/benchmarks/regrid_source.tsv"
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=CONFIG_FILE,
        settings=settings(
            "data.source", "data.variables", "data.grid", "data.time_chunk"
        ),
    shell:
        "python -m pipeline prepare --config {params.config} > {log} 2>&1"


rule normalise_data:
    input:
        f"{EXP}/data/regridded.zarr",
    output:
        store=directory(f"{EXP}/data/normalised.zarr"),
        stats=f"{EXP}/data/stats.json",
    log:
        f"{EXP}/logs/normalise_data.log",
    benchmark:
        f"{EXP}/benchmarks/normalise_data.tsv"
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=CONFIG_FILE,
        settings=settings("data.split", "data.time_chunk"),
    shell:
        "python -m pipeline normalise --config {params.config} > {log} 2>&1"
