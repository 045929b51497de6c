# Data stages: raw files -> regridded zarr -> normalised zarr + stats.json, each built in
# data.parts parts over time: init (metadata and plan), one job per part (its chunks and a
# completion marker), finalise (check the markers, consolidate, move the store into place).


rule init_store:
    input:
        [str(p) for p in SOURCE_FILES],
        STATIC_FILES,
    output:
        f"{EXP}/data/regridded.parts/init.json",
    log:
        f"{EXP}/logs/init_store.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(
            "data.source",
            "data.variables",
            "data.grid",
            "data.time_chunk",
            "data.parts",
            *(
                ["data.static"] if CFG.data.static else []
            ),  # absent where none: older results keep their params
        ),
    shell:
        "python -m pipeline prepare --config {params.config:q} --init > {log:q} 2>&1"


rule regrid_part:
    input:
        f"{EXP}/data/regridded.parts/init.json",
    output:
        f"{EXP}/data/regridded.parts/part-{{part}}.done",
    log:
        f"{EXP}/logs/regrid_part-{{part}}.log",
    benchmark:
        f"{EXP}/benchmarks/regrid_part-{{part}}.tsv"
    wildcard_constraints:
        part=r"\d{4}",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline prepare --config {params.config:q} --part {wildcards.part:q} > {log:q} 2>&1"


rule finalise_store:
    input:
        parts(f"{EXP}/data/regridded.parts"),
    output:
        directory(f"{EXP}/data/regridded.zarr"),
    log:
        f"{EXP}/logs/finalise_store.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline prepare --config {params.config:q} --finalise > {log:q} 2>&1"


rule init_normalised:
    input:
        f"{EXP}/data/regridded.zarr",
        FORCING_TABLES,
    output:
        f"{EXP}/data/normalised.parts/init.json",
    log:
        f"{EXP}/logs/init_normalised.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(
            "data.split",
            "data.time_chunk",
            "data.parts",
            *(["data.forcings"] if CFG.data.forcings else []),
        ),
    shell:
        "python -m pipeline normalise --config {params.config:q} --init > {log:q} 2>&1"


rule normalise_part:
    input:
        f"{EXP}/data/normalised.parts/init.json",
    output:
        f"{EXP}/data/normalised.parts/part-{{part}}.done",
    log:
        f"{EXP}/logs/normalise_part-{{part}}.log",
    benchmark:
        f"{EXP}/benchmarks/normalise_part-{{part}}.tsv"
    wildcard_constraints:
        part=r"\d{4}",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline normalise --config {params.config:q} --part {wildcards.part:q} > {log:q} 2>&1"


rule finalise_normalised:
    input:
        parts(f"{EXP}/data/normalised.parts"),
    output:
        store=directory(f"{EXP}/data/normalised.zarr"),
        stats=f"{EXP}/data/stats.json",
    log:
        f"{EXP}/logs/finalise_normalised.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline normalise --config {params.config:q} --finalise > {log:q} 2>&1"
