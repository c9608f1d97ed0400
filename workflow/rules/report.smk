# Stage: report. Every figure (PNG + SVG) and summary.md; `snakemake --report` bundles the PNGs
# and summary with the captions in workflow/report/. Editing the plotting code reruns only this.
from emtrait.report import FIGURES

REPORT = "results/report"


rule report:
    input:
        pca=rules.pca.output.pca,
        final=rules.pca.output.final,
        trajectories=rules.pca.output.trajectories,
        predictions=[f"{MONITOR}/predictions.csv".format(model=m) for m in OWN_MONITOR_MODELS],
        metrics=[f"{MONITOR}/metrics.csv".format(model=m) for m in OWN_MONITOR_MODELS],
        alarms=[f"{MONITOR}/alarms.csv".format(model=m) for m in OWN_MONITOR_MODELS],
        selection=[f"{MONITOR}/selection.csv".format(model=m) for m in OWN_MONITOR_MODELS],
        permutation_null=[
            f"{MONITOR}/permutation_null.csv".format(model=m) for m in OWN_MONITOR_MODELS
        ],
        layers=[f"{MONITOR}/layers.csv".format(model=m) for m in MODELS],
        layer_selection=[f"results/traits/{m}/layer_selection.json" for m in MODELS],
        stress=[f"{transfer_dir(m)}/metrics.csv" for m in STRESS_MODELS],
        transfer=[f"{MONITOR}/transfer.csv".format(model=m) for m in TRANSFERRED],
        cube=[cube(m) for m in MODELS],
        screen=SCREEN_SUMMARIES,
        code=emtrait_source("report/figures.py"),
        screen_code=emtrait_source("report/screen.py"),
    output:
        summary=report(f"{REPORT}/summary.md", caption="../report/summary.rst", category="Summary"),
        ablation=f"{REPORT}/ablation.csv",
        png=[
            report(
                f"{REPORT}/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures"
            )
            for name in FIGURES
        ],
        svg=[f"{REPORT}/figures/{name}.svg" for name in FIGURES],
        screen_png=(
            [
                report(
                    f"{REPORT}/figures/screen_vs_outcome.png",
                    caption="../report/screen_vs_outcome.rst",
                    category="Figures",
                )
            ]
            if CFG.screen.enabled
            else []
        ),
        screen_svg=[f"{REPORT}/figures/screen_vs_outcome.svg"] if CFG.screen.enabled else [],
        screen_table=[f"{REPORT}/screen.csv"] if CFG.screen.enabled else [],
    log:
        "logs/report/report.log",
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    params:
        config=config_file,
        report=CFG.monitor.model_dump_json(
            include={"alarm_threshold", "bootstrap", "seed", "step0", "permutations"}
        ),
        tables=lambda wildcards, input: " ".join(
            f"--{key.replace('_', '-')} {path}"
            for key in (
                "predictions",
                "metrics",
                "alarms",
                "selection",
                "stress",
                "cube",
                "permutation_null",
                "layer_selection",
                "layers",
                "screen",
                "transfer",
            )
            for path in input[key]
        ),
        figures=lambda wildcards, output: " ".join(f"--figure {p}" for p in output.png + output.svg),
        screen_out=lambda wildcards, output: " ".join(
            [f"--screen-figure {p}" for p in output.screen_png + output.screen_svg]
            + [f"--screen-table {p}" for p in output.screen_table]
        ),
    shell:
        "emtrait report build --config {params.config} --pca {input.pca} --final {input.final} --trajectories {input.trajectories} {params.tables} --summary {output.summary} --ablation {output.ablation} {params.figures} {params.screen_out} > {log} 2>&1"


FINAL_OUTPUTS.append(f"{REPORT}/summary.md")
