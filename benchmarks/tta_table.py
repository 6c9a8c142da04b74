"""Test surface Dice and prediction time per TTA choice, ensemble and threshold rule, on a SYNTHETIC dataset.

For each setting (tta none / flips / axes / axes+flips with the first model; an ensemble of all models without
TTA) the test kidneys and the validation group are predicted once; then every threshold rule (the threshold
stored in the model folder by notebook 02, "tune" on this setting's validation prediction, the argmax 0.5 and a
top fraction) binarises the same probabilities, and each submission is scored with the leaderboard metric against
the synthetic solution.csv. Synthetic scores say nothing about the leaderboard: they show the code paths work
and what each setting costs.

    python benchmarks/tta_table.py --data-dir DIR --model-dir MODEL [MODEL ...] [--settings none flips ...]

Results: a markdown table on stdout and `--out`/tta_table.json, rewritten after every setting; the rows of settings
not run this time are kept from that file.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from lib import data, inference, postprocess, predictor, submission
from lib.postprocess import ThresholdRule

SETTINGS = ("none", "flips", "axes", "ensemble", "axes+flips")
RULES = ("model", "tune", "0.5", "top:0.01")


def run_setting(name: str, model_dirs: list[Path], root: Path, out: Path, val_group: str,
                rules: Sequence[str] = RULES) -> list[dict]:
    """Predict once with this setting, then score every threshold rule on the same probabilities (the validation
    group is predicted only for "tune")."""
    dirs = model_dirs if name == "ensemble" else model_dirs[:1]
    tta = "none" if name == "ensemble" else name
    run = predictor.Predictor(predictor.load_models(dirs, "cpu"), tta=tta, progress=False)
    groups = data.discover(root)
    tests = {n: g for n, g in groups.items() if g.split == "test"}
    scratch = out / name.replace("+", "_")
    start = time.perf_counter()
    probs = {n: run.predict_group(g, scratch / "probabilities" / f"{n}.npy", overwrite=True) for n, g in tests.items()}
    seconds = time.perf_counter() - start
    tuning = inference.tune_threshold(run, groups[val_group], ThresholdRule("tune"), scratch) if "tune" in rules else None
    rows = []
    for spec in rules:
        rule = ThresholdRule.parse(float(spec) if spec[0].isdigit() else spec)
        cut = postprocess.decide_threshold(rule, tuning.curve if tuning else None, dirs)
        submission_rows = []
        for n, g in tests.items():
            threshold = cut if cut is not None else postprocess.top_fraction_threshold(probs[n], rule.value)
            mask, _ = postprocess.segment(probs[n], threshold, scratch / "masks" / f"{n}.npy", progress=False)
            submission_rows += submission.group_rows(g, mask)
        target = scratch / f"submission_{spec.replace(':', '_')}.csv"
        target.unlink(missing_ok=True)
        submission.write_submission(submission_rows, target, root / "sample_submission.csv")
        score = inference.score(root, target, list(tests))
        rows.append({"setting": name, "models": len(dirs), "tta": tta, "rule": spec, "threshold": cut,
                     "test_surface_dice": score["score"], **{f"{k}": v for k, v in score["per_image"].items()},
                     "test_prediction_seconds": seconds})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a SYNTHETIC competition root with solution.csv")
    ap.add_argument("--model-dir", type=Path, nargs="+", required=True, help="model folders with threshold.json")
    ap.add_argument("--val-group", default="kidney_3_dense")
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    ap.add_argument("--rules", nargs="+", default=list(RULES), help=f"threshold rules (default: {' '.join(RULES)})")
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmarks/tta_table"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stored = args.out / "tta_table.json"  # settings run earlier into this folder are kept (run them one by one)
    results = [r for r in (json.loads(stored.read_text()) if stored.is_file() else []) if r["setting"] not in args.settings]
    for name in args.settings:
        results += run_setting(name, args.model_dir, args.data_dir, args.out, args.val_group, args.rules)
        results.sort(key=lambda r: SETTINGS.index(r["setting"]))
        stored.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: done", flush=True)
    print("| setting | models | rule | threshold | test surface Dice | kidney_5 | kidney_6 | prediction s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        cut = "per kidney" if r["threshold"] is None else f"{r['threshold']:.2f}"
        print(f"| {r['setting']} | {r['models']} | {r['rule']} | {cut} | {r['test_surface_dice']:.4f} | "
              f"{r.get('kidney_5', float('nan')):.4f} | {r.get('kidney_6', float('nan')):.4f} | "
              f"{r['test_prediction_seconds']:.0f} |")
    return results


if __name__ == "__main__":
    main()
