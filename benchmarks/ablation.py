"""Ablation of what training adds beyond the seed recipe, on SYNTHETIC data, over several training seeds.

Arms (each trained once per seed, `tiny` network from scratch, CPU): the seed recipe (nnU-Net's CTNormalization with
the training set's statistics); the seed recipe with twice the epochs (a control: a pseudo-label arm trains two
rounds, so its gain would otherwise mix refinement with longer training); + one pseudo-label round
(`pseudo_label_rounds=1`); + resolution augmentation (`scale_range` 0.95-1.8, kidney_6's 63 µm voxels seen from
50 µm); both; + per-kidney normalisation (`normalisation="kidney"`, the project's default), without and with a
pseudo-label round; on per-kidney normalisation, + each metric loss (`loss="skeleton_recall"`, `loss="surface"`,
weight 1; `lib.training.losses`), without and with a pseudo-label round. Each trained model is evaluated with
inference resampling on (the project's default) and off.
Reported per arm and resampling: validation surface Dice (kidney_3_dense, at the threshold tuned on it), test surface
Dice per kidney (kidney_5, kidney_6: the solution the synthetic generator writes) and their mean, the share of the
sparse groups' true vessel voxels that the training labels hold (label recall; after refinement for pseudo-label
arms), training and inference minutes (wall time less any `kill -STOP` pause): mean, standard deviation and range
over the seeds.

The dataset is generated with a seed no test uses (`--data-seed`, default 101). Synthetic scores say nothing about
the leaderboard; they only compare the arms with each other on this generator.

Full run (docs/ablation.md; hours on 2 CPU cores):
    .venv/bin/python benchmarks/ablation.py --seeds 0 1 2
Each finished (arm, seed) is stored under --out (or in --results) and skipped when the command is run again.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import threading
import time
from pathlib import Path

import pandas as pd

from lib import data, inference, paths, postprocess, predictor, refine
from lib.normalisation import NoContrastError
from lib.training import fine_tune
from lib.training.fine_tune import SPARSE_GROUPS, TrainSettings
from tools import infer, synthetic

SEED = {"normalisation": "dataset"}  # the seed's recipe normalises with the training set's statistics
ARMS = {
    "seed recipe": SEED,
    "seed recipe, 2 x epochs": {**SEED, "epoch_factor": 2},
    "+ pseudo-labels": {**SEED, "pseudo_label_rounds": 1},
    "+ resolution aug": {**SEED, "scale_range": (0.95, 1.8)},
    "+ both": {**SEED, "pseudo_label_rounds": 1, "scale_range": (0.95, 1.8)},
    "+ per-kidney normalisation": {"normalisation": "kidney"},
    "+ per-kidney normalisation + pseudo-labels": {"normalisation": "kidney", "pseudo_label_rounds": 1},
    "+ per-kidney normalisation + skeleton recall": {"normalisation": "kidney", "loss": "skeleton_recall"},
    "+ per-kidney normalisation + surface loss": {"normalisation": "kidney", "loss": "surface"},
    "+ per-kidney normalisation + skeleton recall + pseudo-labels": {"normalisation": "kidney",
                                                                     "loss": "skeleton_recall",
                                                                     "pseudo_label_rounds": 1},
    "+ per-kidney normalisation + surface loss + pseudo-labels": {"normalisation": "kidney", "loss": "surface",
                                                                  "pseudo_label_rounds": 1},
}
TEST_KIDNEYS = ("kidney_5", "kidney_6")


class RunningClock:
    """Seconds since start, less the time the process was stopped (`kill -STOP`, to leave the CPUs to a timing
    benchmark): a thread ticking every 0.2 s sees a stop as a gap of more than `gap_s`."""

    def __init__(self, gap_s: float = 3.0):
        self.start = self.last = time.perf_counter()
        self.stopped = 0.0
        self.gap_s = gap_s
        self.done = threading.Event()
        threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self.done.wait(0.2):
            now = time.perf_counter()
            if now - self.last > self.gap_s:
                self.stopped += now - self.last - 0.2
            self.last = now

    def seconds(self) -> float:
        """The running seconds so far; the clock stops ticking."""
        self.done.set()
        return time.perf_counter() - self.start - self.stopped


def arm_settings(arm: str, seed: int, budget: dict) -> TrainSettings:
    """One arm's training settings: the shared budget (epochs per round, iterations) with the arm's changes."""
    changes = dict(ARMS[arm])
    budget = {**budget, "epochs": budget["epochs"] * changes.pop("epoch_factor", 1)}
    return TrainSettings(configuration="tiny", device="cpu", seed=seed, **budget, **changes)


def run_arm(root: Path, out: Path, arm: str, seed: int, budget: dict,
            resampling: tuple[bool, ...] = (True, False)) -> list[dict]:
    """Train one arm with one seed (or reuse its finished model) and evaluate it with each inference resampling (on,
    off); one record each."""
    settings = arm_settings(arm, seed, budget)
    model_dir = fine_tune.default_model_dir(out / "train")
    if (model_dir / "fold_0" / "checkpoint_final.pth").is_file():  # trained by an earlier, interrupted call
        refinement = out / "train" / "refinement.json"
        rounds = pd.DataFrame(json.loads(refinement.read_text()) if refinement.is_file() else [])
        train_minutes = float("nan")  # not timed again
    else:
        clock = RunningClock()
        result, rounds = refine.train_with_pseudo_labels(root, out / "train", settings, progress=False)
        model_dir, train_minutes = result.model_dir, clock.seconds() / 60
    provenance = json.loads((root / "synthetic.json").read_text())["groups"]
    recall = {g: provenance[g]["labelled_share_of_true_vessels"] for g in SPARSE_GROUPS}
    if len(rounds):
        recall.update({row["group"]: row["true_labelled_after"] for row in rounds.to_dict("records")})
    refused = refused_kidneys(model_dir, root)
    scored = root if not refused else root_without(root, refused, out / "root_without_refused")
    records = []
    for resample in resampling:
        clock = RunningClock()
        scores = infer.predict_submission(model_dir, scored, out / f"infer_resample_{resample}", threshold="tune",
                                          tta=False, resample=resample, device="cpu")
        chosen = next(c for c in scores["validation_curve"] if c["threshold"] == scores["threshold"])
        if resample:  # the project's default inference: store its cut as notebook 02 does (benchmarks/tta_table.py)
            postprocess.save_threshold(model_dir, pd.DataFrame(scores["validation_curve"]), scores["threshold"],
                                       "kidney_3_dense", {"tta": "none", "ablation_arm": arm, "seed": seed})
        per = {**scores["test_score"]["per_image"], **dict.fromkeys(refused, 0.0)}
        records.append({"arm": arm, "seed": seed, "resample": resample, "val_surface_dice": chosen["surface_dice"],
                        **{f"test_{k}": per[k] for k in TEST_KIDNEYS},
                        "test_mean": sum(per[k] for k in TEST_KIDNEYS) / len(TEST_KIDNEYS),
                        "refused": refused,
                        **{f"label_recall_{g}": v for g, v in recall.items()},
                        "train_minutes": train_minutes, "infer_minutes": clock.seconds() / 60})
    return records


def root_without(root: Path, kidneys: list[str], view: Path) -> Path:
    """A competition root without some test kidneys (links to the rest; sample_submission and solution filtered), so
    notebook 03's functions predict and score the others."""
    if view.exists():
        shutil.rmtree(view)
    (view / "test").mkdir(parents=True)
    for entry in root.iterdir():
        if entry.name not in ("test", "sample_submission.csv", "solution.csv"):
            (view / entry.name).symlink_to(entry.resolve())
    for group in (root / "test").iterdir():
        if group.name not in kidneys:
            (view / "test" / group.name).symlink_to(group.resolve())
    for name in ("sample_submission.csv", "solution.csv"):
        table = pd.read_csv(root / name)
        keep = ~table["id"].str.rsplit("_", n=1).str[0].isin(kidneys)
        table[keep].to_csv(view / name, index=False)
    return view


def refused_kidneys(model_dir: Path, root: Path) -> list[str]:
    """The test kidneys notebook 03 refuses for this model (no contrast left once normalised, e.g. the kidney_5 look
    under "dataset"): scored 0, as an empty submission would be (the notebook itself stops before predicting)."""
    run = predictor.Predictor(predictor.load_model(model_dir, "cpu"))
    groups = data.discover(root)
    refused = []
    for kidney in TEST_KIDNEYS:
        try:
            inference.intensity_table(run, {kidney: groups[kidney]}, progress=False)
        except NoContrastError:
            refused.append(kidney)
    if len(refused) == len(TEST_KIDNEYS):
        raise NoContrastError(f"{model_dir}: every test kidney is refused; nothing to compare")
    return refused


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± standard deviation [min, max] over seeds, one row per arm and resampling (a lone seed: its value)."""
    metrics = [c for c in results.columns if c not in ("arm", "seed", "resample", "refused")]
    rows = []
    order = {arm: i for i, arm in enumerate(ARMS)}
    results = results.sort_values(["arm", "resample"], key=lambda c: c.map(order) if c.name == "arm" else ~c,
                                  kind="stable")
    for (arm, resample), group in results.groupby(["arm", "resample"], sort=False):
        row = {"arm": arm, "resample": "on" if resample else "off", "seeds": len(group)}
        for m in metrics:
            v = group[m]
            row[m] = (f"{v.mean():.3f} ± {v.std(ddof=1):.3f} [{v.min():.3f}, {v.max():.3f}]" if len(v) > 1
                      else f"{v.iloc[0]:.3f} (one seed: no spread)")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table of a frame (the docs' format), without pandas' optional tabulate dependency."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def add_run_arguments(parser: argparse.ArgumentParser, out: Path, results_help: str) -> None:
    """The options the synthetic training benchmarks share: output folder, data, training seeds, budget, results."""
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--preset", default="small", choices=sorted(synthetic.PRESETS))
    parser.add_argument("--data-seed", type=int, default=101, help="synthetic dataset seed (no test uses 101)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (>= 3 for a spread)")
    parser.add_argument("--epochs", type=int, default=6, help="per round (demo: 6)")
    parser.add_argument("--iterations", type=int, default=40, help="per epoch (demo: 40)")
    parser.add_argument("--val-iterations", type=int, default=5)
    parser.add_argument("--results", type=Path, default=None, help=results_help)


def run_setup(args: argparse.Namespace, key: str) -> tuple[dict, Path, str, Path, set[tuple[str, int]]]:
    """(training budget, data root (generated when missing), budget tag, results file, the (record[key], seed)
    pairs it already holds: a rerun skips them)."""
    budget = {"epochs": args.epochs, "iterations_per_epoch": args.iterations,
              "val_iterations_per_epoch": args.val_iterations}
    root = args.out / f"data_{args.preset}_{args.data_seed}"
    if not (root / "synthetic.json").is_file():
        synthetic.generate(root, args.preset, args.data_seed, progress=False)
    tag = f"e{args.epochs}_i{args.iterations}_v{args.val_iterations}"
    results_file = args.results or args.out / f"results_{args.preset}_{args.data_seed}_{tag}.jsonl"
    done = {(r[key], r["seed"]) for r in map(json.loads, results_file.read_text().splitlines())} \
        if results_file.is_file() else set()
    return budget, root, tag, results_file, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, paths.PROJECT_ROOT / "outputs" / "ablation",
                      "results file to continue (default: --out/results_<preset>_<data seed>_<budget>.jsonl); "
                      "docs/ablation.md's run is docs/benchmarks/ablation_small_101_e6_i40_v5.jsonl")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--resample", nargs="+", default=["on", "off"], choices=["on", "off"],
                        help="inference resampling to evaluate each model with (on: the project's default)")
    args = parser.parse_args()
    budget, root, tag, results_file, done = run_setup(args, "arm")
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            print(f"training {arm!r}, seed {seed} ({tag}) ...", flush=True)
            slug = re.sub(r"[^\w-]+", "_", arm.strip("+ "))
            records = run_arm(root, args.out / tag / f"{slug}_seed{seed}", arm, seed, budget,
                              tuple(r == "on" for r in args.resample))
            with open(results_file, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            print(json.dumps(records), flush=True)
    results = pd.DataFrame([json.loads(line) for line in results_file.read_text().splitlines()])
    print(f"\nSYNTHETIC data (preset {args.preset}, data seed {args.data_seed}), {tag}: mean ± sd [min, max] over "
          "seeds; says nothing about the leaderboard\n")
    table = summary_table(results)
    print(markdown(table.rename(columns=lambda c: c.replace("_", " "))))


if __name__ == "__main__":
    main()
