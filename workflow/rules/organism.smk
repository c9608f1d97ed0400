# Stage: organism. Rules call `emtrait` commands; paths come from common.smk.
# A model entry `source: organism:<name>` is prepared from resources/organisms/<name>, which
# this rule builds from `organisms.<name>` of the config (prepare_model takes it as input
# through helpers/prepare.smk's organism_input).


rule build_organism:
    output:
        directory("resources/organisms/{organism}"),
    log:
        "logs/organism/{organism}.log",
    wildcard_constraints:
        organism=_alternatives(list(CFG.organisms)) or "(?!)",
    conda:
        "../../envs/emtrait.yaml"
    threads: lambda wildcards: CFG.organisms[wildcards.organism].threads
    params:
        config=config_file,
        spec=lambda wildcards: CFG.organisms[wildcards.organism].model_dump_json(),
    shell:
        "emtrait organism build --config {params.config} --name {wildcards.organism} --out {output} --no-progress > {log} 2>&1"
