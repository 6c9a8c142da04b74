"""Notebook 03 without the figures, for a script (benchmarks/ablation.py): `predict_submission(model_dir, data_dir,
out_dir, **options)` strings `lib.inference` together with notebook 03's parameters as options.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lib import data, inference, parameters, paths, submission


def predict_submission(model_dir: str | Path | Sequence[str | Path] | None, data_dir: str | Path,
                       out_dir: str | Path, **options: object) -> dict:
    """Notebook 03 without the figures: threshold, every test kidney, `submission.csv`, and its score when the
    data root has a solution. `options` are notebook 03's other parameters (lib.parameters; its defaults, checked
    as the notebook checks them). Returns what notebook 03 writes to scores.json."""
    schema = parameters.SCHEMAS["03_infer"].by_name
    unknown = sorted(set(options) - set(schema) | set(options) & {"data_dir", "model_dir", "output_dir"})
    if unknown:
        raise TypeError(f"predict_submission: no option {unknown[0]!r}{parameters.suggestion(unknown[0], schema)}")
    o = {name: p.default for name, p in schema.items()} | options
    parameters.check("03_infer", o | {"data_dir": str(data_dir), "model_dir": model_dir, "output_dir": str(out_dir)})
    root, out = paths.resolve_path(data_dir), paths.resolve_path(out_dir)
    groups = data.discover(root)
    tests = data.select_groups({n: g for n, g in groups.items() if g.split == "test"}, o["test_groups"])
    submission.expected_ids(root, tests)  # no test slice or a bad sample_submission.csv: fail before the model loads
    settings = inference.prepare(model_dir, o["threshold"], o["tta"], o["devices"] or o["device"], o["budget_hours"],
                                 o["tile_step"], o["resample"])
    inference.intensity_table(settings.predictor, tests, progress=False)  # no contrast: stop before predicting
    out.mkdir(parents=True, exist_ok=True)
    if settings.runtime_plan is not None:
        settings.runtime_plan.to_csv(out / "runtime_plan.csv", index=False)
    chosen, tuning = inference.choose_threshold(settings, groups[o["val_group"]] if o["val_group"] else None, out)
    kidneys = list(inference.predict_kidneys(settings, tests, chosen, out, o["min_component_size"]))
    target = paths.resolve_path(o["submission_file"]) if o["submission_file"] else out / "submission.csv"
    submission.write_submission(inference.rows(kidneys), target, root / "sample_submission.csv")
    test_score = inference.score(root, target, list(tests))
    return inference.scores_record(settings, chosen, inference.kidney_table(kidneys), target, tuning, test_score)
