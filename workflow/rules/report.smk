# Stage: report. Every figure (PNG + SVG) and summary.md; `snakemake --report` bundles the PNGs
# and summary with the captions in workflow/report/. Editing the plotting code reruns only this.
from emtrait.report import FIGURES

REPORT = "results/report"


rule report:
    input:
        analysis=rules.pca.output,
        evaluations=[path.format(model=m) for m in MODELS
                     for path in rules.monitor_evaluate.output + rules.monitor_fit.output],
        stress=[STRESS_METRICS.format(model=m) for m in STRESS_MODELS],
        directions=[directions(m) for m in MODELS],
        code=emtrait_source("report/figures.py"),
    output:
        summary=report(f"{REPORT}/summary.md", caption="../report/summary.rst",
                       category="Summary"),
        ablation=f"{REPORT}/ablation.csv",
        png=[report(f"{REPORT}/figures/{name}.png", caption=f"../report/{name}.rst",
                    category="Figures") for name in FIGURES],
        svg=[f"{REPORT}/figures/{name}.svg" for name in FIGURES],
    log:
        "logs/report/report.log",
    params:
        config=config_file,
        report=CFG.monitor.model_dump_json(include={"alarm_threshold", "bootstrap", "seed"}),
        analysis=lambda wildcards, input: Path(input.analysis[0]).parent,
        monitor_dirs=" ".join(f"--monitor-dir {MONITOR.format(model=m)}" for m in MODELS),
        stress_dirs=" ".join(f"--stress-dir {MONITOR.format(model=m)}" for m in STRESS_MODELS),
        directions=lambda wildcards, input: " ".join(f"--directions {d}" for d in input.directions),
        out=lambda wildcards, output: Path(output.summary).parent,
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    shell:
        "emtrait report build --config {params.config} --analysis {params.analysis} {params.monitor_dirs} {params.stress_dirs} {params.directions} --out {params.out} > {log} 2>&1"


FINAL_OUTPUTS.append(f"{REPORT}/summary.md")
