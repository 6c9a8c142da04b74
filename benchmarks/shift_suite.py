"""Shift suite: do the normalisation schemes and threshold rules hold up when a test kidney is scanned unlike the
training kidneys? On SYNTHETIC data; says nothing about the leaderboard.

For each normalisation ("dataset": the seed's CTNormalization with the training set's statistics; "kidney": each
kidney by its own) and training seed, the `tiny` network is trained from scratch on the synthetic `small` preset
(data seed 101, the ablation's budget), its cut tuned on kidney_3_dense (rule "model", which notebook 02 stores;
"tune" in notebook 03 gives the same cut here, both tuned without TTA). Each test kidney (kidney_5, kidney_6) is then
re-rendered under each shift (`tools.synthetic.write_shifted_test`: the same vessel tree) and predicted:

    none              as generated
    look <kidney>     its raw values affinely remapped to a real kidney's scanner mean and sd (../shared/competition.md)
    noise x2          twice its noise
    63 µm             rendered at kidney_6's 63.08 µm voxel
    together <kidney> that look, noise x2 and 63 µm at once

and scored (surface Dice at tolerance 0 against the re-rendered truth; a kidney the pipeline refuses because it has no
contrast left once normalised scores 0, as an empty submission would) at each rule's cut: "model"/"tune" (the
stored cut), 0.5 (an argmax) and "top:F" (the top F of the kidney's voxels, F the dense training labels' vessel
fraction). Reported per (normalisation, rule), over seeds as mean ± sd [min, max]: the mean over kidneys and shifts,
the worst (kidney, shift), and the look retention: the worst over kidneys and the five looks of score / unshifted.

    .venv/bin/python benchmarks/shift_suite.py --seeds 0 1 2      # hours on 2 CPU cores; finished runs are skipped
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lib import data, inference, paths, postprocess, predictor, rle
from lib.normalisation import NoContrastError
from lib.postprocess import ThresholdRule
from lib.training import fine_tune
from tools import synthetic

sys.path.insert(0, str(Path(__file__).parent))
from ablation import add_run_arguments, markdown, run_setup  # noqa: E402  (the benchmarks share them)

NORMALISATIONS = ("dataset", "kidney")
LOOKS = ("kidney_1", "kidney_2", "kidney_3", "kidney_5", "kidney_6")
KIDNEY_6_UM = 63.08
SHIFTS = {"none": {}, **{f"look {k}": {"look": k} for k in LOOKS}, "noise x2": {"noise_factor": 2.0},
          "63 µm": {"voxel_um": KIDNEY_6_UM},
          **{f"together {k}": {"look": k, "noise_factor": 2.0, "voxel_um": KIDNEY_6_UM} for k in LOOKS}}
TEST_KIDNEYS = ("kidney_5", "kidney_6")
VAL_GROUP = "kidney_3_dense"
RULES = ("model/tune", "0.5", "top:F")


def shifted_roots(out: Path, preset: str, seed: int) -> dict[tuple[str, str], Path]:
    """{(kidney, shift): competition root holding that kidney so shifted}, rendered once and reused."""
    roots = {}
    for kidney in TEST_KIDNEYS:
        for shift, change in SHIFTS.items():
            root = out / "shifted" / kidney / shift.replace(" ", "_").replace("µ", "u")
            if not (root / "solution.csv").is_file():
                synthetic.write_shifted_test(root, preset, seed, kidney, **change)
            roots[kidney, shift] = root
    return roots


def truth(root: Path, group: data.Group) -> np.ndarray:
    """The kidney's true mask (Z, H, W) from the root's synthetic solution.csv (small volumes only)."""
    solution = pd.read_csv(root / "solution.csv", dtype={"id": str, "rle": str}, keep_default_na=False)
    by_id = dict(zip(solution["id"], solution["rle"]))
    return np.stack([rle.decode(by_id[group.slice_id(i)], group.shape[1:]) for i in range(group.shape[0])])


def vessel_fraction(root: Path, group: str) -> float:
    """The share of vessel voxels in a labelled training group (the top-F rule's F)."""
    labels = data.open_group(group, root)
    return float(np.mean([(s > 0).mean() for s in labels.read_labels()]))


def train_model(root: Path, out: Path, scheme: str, seed: int, budget: dict) -> Path:
    """Train (or reuse) one model and store its cut tuned on the validation group; its model folder."""
    settings = fine_tune.TrainSettings(configuration="tiny", device="cpu", seed=seed, normalisation=scheme, **budget)
    model_dir = fine_tune.default_model_dir(out)
    if not (model_dir / "fold_0" / "checkpoint_final.pth").is_file():
        fine_tune.train(root, out, settings, progress=False)
    if not (model_dir / postprocess.THRESHOLD_FILE).is_file():
        run = predictor.Predictor(predictor.load_model(model_dir, "cpu"), tta=False, progress=False)
        tuning = inference.tune_threshold(run, data.open_group(VAL_GROUP, root), ThresholdRule("tune"), out / "val")
        postprocess.save_threshold(model_dir, tuning.curve, tuning.threshold, VAL_GROUP, {"tta": "none"})
    return model_dir


def evaluate(model_dir: Path, roots: dict[tuple[str, str], Path], fraction: float, scratch: Path) -> list[dict]:
    """Every shifted kidney predicted once and scored at each rule's cut."""
    run = predictor.Predictor(predictor.load_model(model_dir, "cpu"), tta=False, progress=False)
    stored = postprocess.stored_threshold([model_dir])
    records = []
    for (kidney, shift), root in roots.items():
        group = data.open_group(kidney, root)
        try:
            probs = run.predict_group(group, scratch / f"{kidney}_{shift}.npy".replace(" ", "_"), overwrite=True)
        except NoContrastError:  # the pipeline refuses it (nothing left once normalised): scored as an empty mask
            records += [{"kidney": kidney, "shift": shift, "rule": rule, "threshold": None, "surface_dice": 0.0,
                         "refused": True} for rule in RULES]
            continue
        cuts = dict(zip(RULES, (stored, 0.5, postprocess.top_fraction_threshold(probs, fraction))))
        curve = postprocess.threshold_curve(probs, truth(root, group), sorted(set(cuts.values())), progress=False)
        at = curve.set_index("threshold")["surface_dice"]
        records += [{"kidney": kidney, "shift": shift, "rule": rule, "threshold": cut, "surface_dice": float(at[cut])}
                    for rule, cut in cuts.items()]
    return records


def per_seed(results: pd.DataFrame) -> pd.DataFrame:
    """Per (normalisation, rule, seed): mean and worst surface Dice over kidneys and shifts, and look retention."""
    rows = []
    for (scheme, rule, seed), g in results.groupby(["normalisation", "rule", "seed"], sort=False):
        score = g.set_index(["kidney", "shift"])["surface_dice"]
        retention = min(score[k, f"look {look}"] / max(score[k, "none"], 1e-9) for k in TEST_KIDNEYS for look in LOOKS)
        worst = score.idxmin()
        rows.append({"normalisation": scheme, "rule": rule, "seed": seed,
                     "unshifted": score.xs("none", level="shift").mean(), "mean": score.mean(), "worst": score.min(),
                     "worst_case": f"{worst[0]}, {worst[1]}", "look_retention": retention})
    return pd.DataFrame(rows)


def summary(per: pd.DataFrame) -> pd.DataFrame:
    """mean ± sd [min, max] over seeds of each per-seed statistic, one row per (normalisation, rule)."""
    rows = []
    for (scheme, rule), g in per.groupby(["normalisation", "rule"], sort=False):
        row = {"normalisation": scheme, "rule": rule, "seeds": len(g)}
        for m in ("unshifted", "mean", "worst", "look_retention"):
            v = g[m]
            row[m] = (f"{v.mean():.3f} ± {v.std(ddof=1):.3f} [{v.min():.3f}, {v.max():.3f}]" if len(v) > 1
                      else f"{v.iloc[0]:.3f}")
        row["most frequent worst case"] = g["worst_case"].mode().iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, paths.PROJECT_ROOT / "outputs" / "shift_suite", "results file to continue (.jsonl)")
    parser.add_argument("--normalisations", nargs="+", default=list(NORMALISATIONS), choices=NORMALISATIONS)
    args = parser.parse_args()
    budget, root, tag, results_file, done = run_setup(args, "normalisation")
    roots = shifted_roots(args.out, args.preset, args.data_seed)
    fraction = vessel_fraction(root, "kidney_1_dense")
    for seed in args.seeds:
        for scheme in args.normalisations:
            if (scheme, seed) in done:
                continue
            print(f"normalisation {scheme!r}, seed {seed} ({tag}) ...", flush=True)
            run = args.out / tag / f"{scheme}_seed{seed}"
            model_dir = train_model(root, run / "train", scheme, seed, budget)
            records = [{"normalisation": scheme, "seed": seed, **r}
                       for r in evaluate(model_dir, roots, fraction, run / "probabilities")]
            with open(results_file, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
    results = pd.DataFrame([json.loads(line) for line in results_file.read_text().splitlines()])
    print(f"\nSYNTHETIC data (preset {args.preset}, data seed {args.data_seed}), {tag}, top-F with F = {fraction:.4f} "
          "(kidney_1_dense's labels); mean ± sd [min, max] over seeds; says nothing about the leaderboard\n")
    print(markdown(summary(per_seed(results)).rename(columns=lambda c: c.replace("_", " "))))
    table = results.groupby(["normalisation", "rule", "kidney", "shift"], sort=False)["surface_dice"].mean()
    print("\nSurface Dice per kidney and shift (mean over seeds):\n")
    print(markdown(table.unstack("shift").round(3).reset_index()))


if __name__ == "__main__":
    main()
