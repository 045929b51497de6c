# Data stages: raw files -> regridded zarr -> normalised zarr + stats.json, each built in
# data.parts parts over time: init (metadata and plan), one job per part (its chunks and a
# completion marker), finalise (check the markers, consolidate, move the store into place).


rule init_store:
    input:
        [str(p) for p in SOURCE_FILES],
        STATIC_FILES,
    output:
        REGRIDDED_BUILD["plan"],
    log:
        LOG("init_store"),
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
        REGRIDDED_BUILD["plan"],
    output:
        REGRIDDED_BUILD["marker"],
    log:
        LOG("regrid_part-{part}"),
    benchmark:
        BENCHMARK("regrid_part-{part}")
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
        REGRIDDED_BUILD["markers"],
    output:
        directory(REGRIDDED),
    log:
        LOG("finalise_store"),
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline prepare --config {params.config:q} --finalise > {log:q} 2>&1"


rule init_normalised:
    input:
        REGRIDDED,
        FORCING_TABLES,
    output:
        NORMALISED_BUILD["plan"],
    log:
        LOG("init_normalised"),
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
        NORMALISED_BUILD["plan"],
    output:
        NORMALISED_BUILD["marker"],
    log:
        LOG("normalise_part-{part}"),
    benchmark:
        BENCHMARK("normalise_part-{part}")
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
        NORMALISED_BUILD["markers"],
    output:
        store=directory(NORMALISED),
        stats=STATS,
    log:
        LOG("finalise_normalised"),
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline normalise --config {params.config:q} --finalise > {log:q} 2>&1"
