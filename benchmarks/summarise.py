"""Render ``benchmarks/RESULTS.md`` from the JSON files in ``benchmarks/results/``.

Every figure in RESULTS.md comes from a result file written by a benchmark script; this script
only formats them (missing files are listed as "not run"). Run it after any benchmark:

    .venv/bin/python benchmarks/summarise.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _load(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _f(x, nd=3):
    return "n/a" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _missing(name: str, command: str) -> list[str]:
    return [f"*Not run yet* (`{command}` writes `results/{name}`).", ""]


def section_speed() -> list[str]:
    out = ["## Speed of synthesis and of a Learn2Synth iteration (issue #2)", ""]
    both = _load("speed.json")
    if both:
        out += [f"Measured side by side in one run by `benchmarks/speed.py` ({both['threads']} threads, "
                f"{both['environment']['time']}; `results/speed.json`): generator/cornucopia "
                f"{_f(both['generator_vs_cornucopia_3d'], 1)}x (3D), {_f(both['generator_vs_cornucopia_2d'], 1)}x (2D); "
                f"Learn2Synth iteration / plain step {_f(both['l2s_step_over_synthseg_step'], 2)}x time, "
                f"{_f(both['memory_ratio'], 2)}x peak memory. The parts, from their own files:", ""]
    gen = _load("speed_generator.json")
    if gen:
        s = gen["seconds"]
        out += ["| generator vs cornucopia 0.5.1 | ours (s, median) | cornucopia (s) | throughput ratio |",
                "|---|---|---|---|",
                f"| 3D {gen['shape_3d']} | {_f(sorted(s['ours_3d_per_volume'])[len(s['ours_3d_per_volume']) // 2], 2)} "
                f"| {_f(s['cornucopia_3d_per_volume'][0], 1)} | **{_f(gen['generator_vs_cornucopia_3d'], 1)}x** |",
                f"| 2D batch {gen['batch_2d']} | {_f(sorted(s['ours_2d_per_batch64'])[1], 2)} "
                f"| {_f(s['cornucopia_2d_per_batch64'][0], 1)} | **{_f(gen['generator_vs_cornucopia_2d'], 1)}x** |",
                "", "Command: `.venv/bin/python benchmarks/bench_generator_speed.py` (target >= 10x in 3D).", ""]
    else:
        out += _missing("speed_generator.json", "benchmarks/bench_generator_speed.py")
    l2s = _load("speed_l2s.json")
    if l2s:
        out += [f"One Learn2Synth iteration over one plain SynthSeg step (paper UNet, batch {l2s['batch']}): "
                f"**{_f(l2s['time_ratio'], 2)}x** time (target <= 2.5, research code 3.3-4.6), "
                f"**{_f(l2s['memory_ratio'], 2)}x** peak memory ({l2s['memory_method']}). "
                f"Hypergradient every 2nd / 4th step (a named deviation from the paper): "
                f"{_f(l2s.get('deviation_hyper_every_2_ratio'), 2)}x / {_f(l2s.get('deviation_hyper_every_4_ratio'), 2)}x. "
                f"Command: `.venv/bin/python benchmarks/bench_l2s_step.py`.", ""]
    bare = _load("speed_l2s_nonorm.json")
    if bare:
        out += [f"The same without normalisation (the paper's network exactly as published; the synthetic "
                f"experiments here add InstanceNorm): **{_f(bare['time_ratio'], 2)}x** time "
                f"({_f(bare['plain_step_s'], 3)} s vs {_f(bare['l2s_iteration_s'], 3)} s), "
                f"**{_f(bare['memory_ratio'], 2)}x** peak memory. Command: `.venv/bin/python "
                f"benchmarks/bench_l2s_step.py --norm none --out benchmarks/results/speed_l2s_nonorm.json`.", ""]
    return out


def section_synthetic() -> list[str]:
    out = ["## Synthetic experiments of the paper (issue #2)", ""]
    nr = _load("noise_recovery.json")
    out += ["Set-up (both tables): 2D axial slices at 2 mm of the 20 SynthSeg training label maps, split by "
            "subject (source 01-10, \"real\" 11-15, test 16-20), slices chosen by brain content; the paper's "
            "UNet with InstanceNorm; Adam 1e-3 (segmenter) and 1e-2 (augmenter); Dice + CE; batch 4 (the "
            "paper: 64) of 96 x 96; 33 labels (the paper: 24); `--generator light` = without bias, gamma, "
            "blur and low resolution (named deviations, for a 2-core CPU budget).", ""]
    if nr:
        published = {"0.0": 0.001, "0.05": 0.042, "0.1": 0.098, "0.15": 0.146, "U[0.025, 0.2]": 0.134}
        out += ["Table 1, noise recovery: learnable sigma (start 0.03) after the steps shown (plain warm-up "
                "+ Learn2Synth iterations); inferred = mean over the last 10% of the steps:", "",
                "| preset sigma | inferred sigma | final sigma | published | steps (warm-up) | seed |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['preset']} | {_f(r['inferred_sigma'], 4)} | {_f(r.get('final_sigma'), 4)} "
                f"| {published.get(r['preset'], 'n/a')} | {r['steps']} ({r.get('warmup', 'n/a')}) | {r['seed']} |"
                for r in nr]
        out += ["", "Command: `.venv/bin/python benchmarks/noise_recovery.py --work runs/synthetic` "
                "(defaults: 4500 steps, 3000 warm-up).", ""]
        if (RESULTS / "noise_recovery_sigma.png").is_file():
            out += ["![sigma against training step](results/noise_recovery_sigma.png)", ""]
    else:
        out += _missing("noise_recovery.json", "benchmarks/noise_recovery.py")
    t2 = _load("table2_dice.json")
    if t2:
        out += ["Table 2, mean per-structure Dice on held-out noisy synthetic images "
                "(N: trained without noise, L: Learn2Synth, O: trained with the true noise; published "
                "L / O: 0.89 / 0.89, 0.86 / 0.86, 0.84 / 0.84):", "",
                "| sigma | N | L | O | L's sigma | steps | test images |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['sigma']} | {_f(r['N'])} | {_f(r['L'])} | {_f(r['O'])} | {_f(r.get('L_sigma'), 4)} "
                f"| {r['steps']} | {r.get('test_images', 'n/a')} |" for r in t2]
        out += ["", "Command: `.venv/bin/python benchmarks/table2_dice.py --work runs/synthetic` "
                "(same `--work` as noise_recovery.py: the Learn2Synth runs are shared).", ""]
    else:
        out += _missing("table2_dice.json", "benchmarks/table2_dice.py")
    return out + section_parameter_recovery()


def section_parameter_recovery() -> list[str]:
    """Table 1's experiment for the augmenter's gamma and blur parts (``parameter_recovery.py``)."""
    rec = _load("parameter_recovery.json")
    if not rec:
        return _missing("parameter_recovery.json", "benchmarks/parameter_recovery.py")
    out = ["Recovery of the augmenter's gamma and blur parts (the Table 1 experiment for them): the "
           "\"real\" images go through a frozen augmenter at the preset (truth); the learnable augmenter "
           "has only that part, started away from it; inferred = mean over the last 10% of the steps:", "",
           "| part | truth | start | inferred | final | steps (warm-up) | validation Dice |",
           "|---|---|---|---|---|---|---|"]
    out += [f"| {r['part']} ({r['key']}) | {r['truth']} | {r['init']} | {_f(r['inferred'], 3)} | "
            f"{_f(r['final'], 3)} | {r['steps']} ({r['warmup']}) | {_f(r.get('final_val_dice'))} |" for r in rec]
    out += ["", "Command: `.venv/bin/python benchmarks/parameter_recovery.py --work runs/recovery`.", ""]
    if (RESULTS / "parameter_recovery.png").is_file():
        out += ["![learnable gamma spread and blur width against training step](results/parameter_recovery.png)", ""]
    return out


def section_app() -> list[str]:
    out = ["## The BIDS App: time and memory (issue #3)", ""]
    inf = _load("inference.json")
    if inf:
        out += [f"Per-stage wall time and peak RSS for one {inf['input']['shape']} image "
                f"({inf['input']['zooms_mm']} mm), {inf['model'].get('mode')} model, "
                f"{inf['machine']['torch_threads']} torch thread(s), {inf['machine']['device']}"
                f"{' (untrained timing stand-in)' if not inf['model'].get('trained', True) else ''}:", "",
                "| stage | wall (s) | peak RSS (MB) |", "|---|---|---|"]
        out += [f"| {k} | {_f(v.get('wall_s'), 2)} | {_f(v.get('peak_rss_mb'), 0)} |" for k, v in inf["stages"].items()]
        out += ["", f"Command: `{inf.get('command', 'benchmarks/bench_inference.py')}`.", ""]
    for name in ("app_overhead.json", "app_throughput.json"):
        data = _load(name)
        if data:
            summary = data.get("summary", data)
            out += [f"`results/{name}`: " + ", ".join(f"{k} = {_f(v, 3)}" for k, v in summary.items()
                                                       if isinstance(v, (int, float, str))), ""]
            runs = data.get("runs") or {}
            if runs:
                out += ["| images at once | threads each | images | wall (s) | images / min | "
                        "first image published (s) | median image runtime (s) |", "|---|---|---|---|---|---|---|"]
                out += [f"| {r['nprocs']} | {r['threads_per_job']} | {r['images_ok']}/{r['images']} | "
                        f"{_f(r['wall_s'], 1)} | {_f(r['images_per_min'], 2)} | {_f(r.get('first_result_s'), 1)} | "
                        f"{_f(r['median_image_runtime_s'], 1)} |" for r in runs.values()]
                out += [""]
        else:
            out += _missing(name, "benchmarks/bench_app.py")
    return out


def section_accuracy() -> list[str]:
    out = ["## Accuracy on real scans (issue #4)", ""]
    for name in ("real_accuracy.md", "real_accuracy_curve.md"):
        path = RESULTS / name
        out += ([path.read_text().strip(), ""] if path.is_file()
                else _missing(name, "benchmarks/real_accuracy.py"))
    return out


def campaign_figure(record: dict, path: Path = RESULTS / "campaign_validation.png") -> Path:
    """Validation Dice (whole real volumes of the tune subjects) against step, one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.4))
    runs: dict[str, list] = {}
    for key, st in record["stages"].items():
        runs.setdefault(key.split("/")[0], []).append((st["step"], st["mean_dice"]))
    for run, pts in sorted(runs.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=run)
    ax.set_xlabel("training step (batch 8)")
    ax.set_ylabel("validation mean Dice")
    ax.set_ylim(0, 1)
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def section_campaign() -> list[str]:
    out = ["## Training campaign of the bundled model (issue #9)", ""]
    speed = _load("train_speed.json")
    if speed:
        v = speed["variants"]
        out += [f"Training step ({speed['setup']}; {speed['environment']['threads']} thread(s), load average "
                f"{_f(speed['environment']['load_average'][0], 1)}; `results/train_speed.json`):", "",
                "| variant | synthesis (s) | forward + loss (s) | backward (s) | optimiser (s) | total (s) | steps/s | parameters |",
                "|---|---|---|---|---|---|---|---|"]
        for name, r in v.items():
            m = r["median_s"]
            out.append(f"| {name} | {_f(m.get('synthesis'), 3)} | {_f(m.get('forward_loss'), 3)} | "
                       f"{_f(m.get('backward'), 3)} | {_f(m.get('optimiser'), 3)} | {_f(m['total'], 3)} | "
                       f"{_f(r['steps_per_s'], 2)} | {r['parameters']:,} |")
        out += ["", f"Same network, new step (bf16 autocast + foreach Adam) over old: "
                f"{_f(speed['speedup_same_network'], 2)}x faster; the campaign's larger network costs "
                f"{_f(speed['new_over_old_time'], 2)}x the old step's time; a Learn2Synth iteration costs "
                f"{_f(speed['l2s_over_new_plain_time'], 2)}x a plain step of the same network.", ""]
    else:
        out += _missing("train_speed.json", "benchmarks/train_speed.py")
    val = _load("campaign_validation.json")
    if val and val.get("stages"):
        fig = campaign_figure(val)
        out += [f"Model selection: {val['metric']}, on the validation (tune) subjects "
                f"{', '.join(val['subjects'])} only (`benchmarks/record_accuracy.py --select`).", "",
                f"![validation Dice against steps]({fig.relative_to(HERE).as_posix()})", "",
                "| stage | step | validation mean Dice | csf | cortex | white matter | deep grey |",
                "|---|---|---|---|---|---|---|"]
        for key, st in sorted(val["stages"].items(), key=lambda kv: (kv[0].split("/")[0], kv[1]["step"])):
            t = st["tissue_dice"]
            out.append(f"| {key} | {st['step']} | {_f(st['mean_dice'])} | {_f(t.get('csf'))} | "
                       f"{_f(t.get('cortex'))} | {_f(t.get('white_matter'))} | {_f(t.get('deep_grey'))} |")
        out.append("")
    else:
        out += _missing("campaign_validation.json", "benchmarks/record_accuracy.py --select RUNS_DIR")
    return out + section_arms() + section_bakeoffs() + section_campaign_3d() + section_cleanup()


def _stage_rows(arms: dict, fork: dict) -> list[str]:
    """Table of the stages of arms at equal CPU time (``record_accuracy.py --select`` records)."""
    out = ["| arm | stage | step | minutes after the start | validation mean Dice | csf | cortex "
           "| white matter | deep grey |",
           "|---|---|---|---|---|---|---|---|---|"]
    for arm, rec in arms.items():
        for key, st in sorted(rec["stages"].items(), key=lambda kv: kv[1]["step"]):
            t, sec = st["tissue_dice"], st.get("training_time_s")
            minutes = None if sec is None or "time_s" not in fork else (sec - fork["time_s"]) / 60
            out.append(f"| {arm} | {key} | {st['step']} | {_f(minutes, 0)} | {_f(st['mean_dice'])} | "
                       f"{_f(t.get('csf'))} | {_f(t.get('cortex'))} | {_f(t.get('white_matter'))} | "
                       f"{_f(t.get('deep_grey'))} |")
    return out + [""]


def section_arms() -> list[str]:
    """Learn2Synth against the plain baseline at equal CPU time (``l2s_vs_plain.sh``)."""
    out = ["### Learn2Synth against the plain baseline at equal CPU time", ""]
    arms = {arm: _load(f"l2s_vs_plain_{arm}.json") for arm in ("l2s", "plain")}
    if not all(arms.values()):
        return out + _missing("l2s_vs_plain_{l2s,plain}.json", "benchmarks/l2s_vs_plain.sh CAMPAIGN ARMS MINUTES")
    fork = arms["l2s"].get("fork") or {}
    out += [f"Both arms fork the campaign at step {fork.get('step', '?')} (same weights, Adam moments, RNG) "
            f"and train side by side, one thread each, for the same training time; their lr restarts at "
            f"{fork.get('lr', '?')} and decays on the clock (cosine to its end at the budget of "
            f"{_f(fork.get('minutes'), 0)} min). The Learn2Synth arm tunes its augmenter by hypergradients "
            f"on the tune subjects (a meta-step every {fork.get('hyper_every', '?')} step(s)); the plain "
            f"arm trains on synthetic images only. Scored on the validation subjects ({', '.join(arms['l2s']['subjects'])}), no test-time augmentation.", ""]
    return out + _stage_rows(arms, fork)


#: what each bake-off compares (``benchmarks/bakeoff.sh NAME ...``)
BAKEOFF_TITLES = {
    "augmenter": "Learn2Synth's augmenter: noise and bias (the paper's) against noise, bias, gamma and blur",
    "3d": "3D at 3 mm against 2.5D at 2 mm, from scratch",
    "sagittal": "all three planes (sagittal on left/right-merged labels) and three neighbouring slices as "
                "input, each against the recipe (axial and coronal, one slice)"}


def section_bakeoffs() -> list[str]:
    """Recipe bake-offs at equal CPU time from one package (``bakeoff.sh``), one table each."""
    by_name: dict[str, dict] = {}
    for path in sorted(RESULTS.glob("bakeoff_*.json")):
        rec = json.loads(path.read_text())
        meta = rec.get("bakeoff") or {}
        by_name.setdefault(meta.get("name", path.stem), {})[meta.get("arm", path.stem)] = rec
    if not by_name:
        return ["### Recipe bake-offs", ""] + _missing(
            "bakeoff_NAME_ARM.json", "benchmarks/bakeoff.sh NAME INIT RUNS MINUTES STAGE ARM OPTIONS ...")
    out = []
    for name, arms in by_name.items():
        meta = next(iter(arms.values()))["bakeoff"]
        options = "; ".join(f"{arm}: `{rec['bakeoff']['options'] or '(the recipe as it is)'}`"
                            for arm, rec in arms.items())
        out += [f"### Bake-off: {BAKEOFF_TITLES.get(name, name)}", "",
                (f"Every arm starts from the weights of `{meta['init']}` (step {meta['step']}; Adam, augmenter "
                 f"and RNG restart in each)" if meta["init"] else "Every arm starts from scratch (same seed)")
                + " and trains side by side with the others, one thread each, for "
                f"{_f(meta['minutes'], 0)} min of training time (lr {'restarted at ' if meta['init'] else ''}"
                f"{meta['lr']}, decayed on the clock; "
                + (f"Learn2Synth, a meta-step every {meta['hyper_every']} steps" if meta.get("method", "l2s-parametric")
                   .startswith("l2s") else f"method {meta['method']}")
                + f"). Options: {options}. "
                f"Validation subjects only ({', '.join(next(iter(arms.values()))['subjects'])}), no test-time "
                f"augmentation. Command: `benchmarks/bakeoff.sh {name} ...`."
                + "".join(f" {arm}: {rec['bakeoff']['note']}" for arm, rec in arms.items() if rec["bakeoff"].get("note")),
                ""]
        out += _stage_rows(arms, meta)
    return out


def section_campaign_3d() -> list[str]:
    """The 3D bake-off arm continued on its own (``record_accuracy.py --select`` of its run folder)."""
    rec = _load("campaign_3d.json")
    if not rec:
        return []
    return ["### 3D campaign: the 3D arm of the 3D-against-2.5D bake-off, continued", "",
            "The 3D network (3 mm, 64^3 patches, batch 1, plain SynthSeg steps, one thread) resumed from its "
            "checkpoint at the end of the bake-off (72 min, lr annealed to 5e-5) with its lr restarted at 5e-4 "
            "and a cosine decay to 240 min of training time; stage packages scored on the validation subjects "
            f"({', '.join(rec['subjects'])}), no test-time augmentation; minutes of training from scratch. "
            "Command: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/record_accuracy.py --select RUNS_DIR "
            "--threads 2 --out benchmarks/results/campaign_3d.json`.", ""] + _stage_rows({"3d": rec}, {"time_s": 0.0})


def section_cleanup() -> list[str]:
    """Connected-component clean-up of the posteriors against none (``cleanup_validation.py``)."""
    rec = _load("cleanup_validation.json")
    if not rec:
        return _missing("cleanup_validation.json", "benchmarks/cleanup_validation.py PACKAGE")
    out = ["### Post-processing: connected-component clean-up (SynthSeg-style)", "",
           f"`{rec['package']}` (weights sha256 {rec.get('sha256', '?')[:12]}) on the validation subjects "
           f"({', '.join(rec['subjects'])}), by `inference.cleanup`, every other inference setting the "
           f"package's own (its mirror test-time augmentation included); command: `OMP_NUM_THREADS=2 "
           f".venv/bin/python benchmarks/cleanup_validation.py PACKAGE --threads 2`.", "",
           "| clean-up | validation mean Dice | " + " | ".join(rec["subjects"])
           + " | csf | cortex | white matter | deep grey |",
           "|---|---|" + "---|" * len(rec["subjects"]) + "---|---|---|---|"]
    for name, st in rec["settings"].items():
        t = st["tissue_dice"]
        per_subject = [st["per_subject"].get(f"sub-{sub}", st["per_subject"].get(sub)) for sub in rec["subjects"]]
        out.append(f"| {name} | {_f(st['mean_dice'], 4)} | " + " | ".join(_f(d, 4) for d in per_subject)
                   + f" | {_f(t.get('csf'))} | {_f(t.get('cortex'))} | {_f(t.get('white_matter'))} "
                   f"| {_f(t.get('deep_grey'))} |")
    return out + [""]


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_block() -> list[str]:
    """The headline accuracy tables (from ``real_accuracy.md``) for the README."""
    path = RESULTS / "real_accuracy.md"
    if not path.is_file():
        return ["*Accuracy not measured yet* (`benchmarks/real_accuracy.py`)."]
    keep, skip = [], False
    for line in path.read_text().splitlines()[1:]:  # drop the file's own title
        if line.startswith("Per-structure Dice"):
            skip = True
        elif line.startswith("Robustness of"):
            skip = False
        if not skip:
            keep.append(line)
    return keep + ["", "Per-structure figures, the Dice-against-training-time curve and every other "
                   "benchmark: [benchmarks/RESULTS.md](benchmarks/RESULTS.md)."]


def update_readme(readme: Path = HERE.parent / "README.md") -> None:
    """Replace the README's text between the results markers with :func:`readme_block`."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(head + README_START + "\n" + "\n".join(readme_block()).strip() + "\n"
                      + README_END + tail)


def main() -> Path:
    lines = ["# Benchmark results", "",
             "Generated by `benchmarks/summarise.py` from `benchmarks/results/*.json`; machine: 2 CPU cores, "
             "no GPU, shared with other work while measured (ratios are measured within one run).", ""]
    for section in (section_campaign, section_speed, section_synthetic, section_app, section_accuracy):
        lines += section()
    out = HERE / "RESULTS.md"
    out.write_text("\n".join(lines) + "\n")
    update_readme()
    return out


if __name__ == "__main__":
    print(main())
