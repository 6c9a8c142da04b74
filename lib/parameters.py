"""Each notebook's parameters in one place: name, default, kind (type and range) and help.

Read by the notebooks (`check(notebook, globals())` right after the parameters cell: a bad value stops before any
work), by the pipeline (`problem` for every config value and `-p` override) and by the Kaggle bundle, whose
`tools.kaggle.parameters_cell` generates each notebook's `parameters` cell from it (tests/test_parameters.py).
"""
from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Expression:
    """A default that is code evaluated in the notebook (e.g. `str(paths.default_data_dir())`), not a literal."""

    code: str


@dataclass(frozen=True)
class Kind:
    """What values a parameter takes: `check(value, default)` is the problem, or None when the value fits."""

    check: Callable[[object, object], str | None]
    path: str | None = None  # "exists": a path the pipeline resolves and checks; "any": one that may not exist yet
    groups: str | None = None  # group names that must be in the competition root: "any", "labelled" or "test" ones


@dataclass(frozen=True)
class Parameter:
    name: str
    default: object
    kind: Kind
    help: str = ""


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def suggestion(name: str, candidates) -> str:
    """"; did you mean 'x'?" for the closest candidate, or ""."""
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def integer(low: int) -> Kind:
    return Kind(lambda v, d: None if _integer(v) and v >= low else f"takes an integer >= {low} (default {d}), got {v!r}")


POSITIVE = Kind(lambda v, d: None if _number(v) and v > 0 else f"takes a positive number (default {d}), got {v!r}")
BOOLEAN = Kind(lambda v, d: None if isinstance(v, bool) else f"takes true or false, got {v!r}")
OPTIONAL_BOOLEAN = Kind(lambda v, d: None if v is None or isinstance(v, bool) else f"takes true, false or null, got {v!r}")
LIST = Kind(lambda v, d: None if isinstance(v, list) else f"takes a list, got {v!r}")
TABLE = Kind(lambda v, d: None if isinstance(v, dict) else f"takes a table, got {v!r}")
FRACTION = Kind(lambda v, d: None if _number(v) and 0 < v <= 1 else f"takes a number in (0, 1], got {v!r}")
HOURS = Kind(lambda v, d: None if v is None or v == "auto" or (_number(v) and v > 0) else
             f"takes a positive number of hours, \"auto\" or null, got {v!r}")
PATCH_SIZE = Kind(lambda v, d: None if v is None or (isinstance(v, list) and len(v) == 3 and all(
    _integer(n) and n > 0 for n in v)) else f"takes three positive integers [z, y, x] (or null), got {v!r}")
DEVICES = Kind(lambda v, d: None if v is None or (isinstance(v, list) and v and all(
    isinstance(x, str) and DEVICE.match(x) for x in v)) else
    f"takes a list of devices, e.g. [\"cuda:0\", \"cuda:1\"] (or null), got {v!r}")


def choice(what: str, sort: bool = False) -> Kind:
    """One of the `what` names ("normalisation", "loss", "configuration"): the lists live beside their code, some
    behind torch, so they are imported when a value is checked."""
    def check(v: object, d: object) -> str | None:
        from lib.normalisation import SCHEMES
        from lib.training.fine_tune import ARCHITECTURES
        from lib.training.losses import LOSSES

        known = tuple({"normalisation": SCHEMES, "loss": LOSSES, "configuration": ARCHITECTURES}[what])
        shown = str(sorted(known)) if sort else ", ".join(map(repr, known))
        return None if v in known else f"takes one of {shown}, got {v!r}" + suggestion(str(v), known)
    return Kind(check)


def _a_path(v: object) -> bool:
    return isinstance(v, os.PathLike) or (isinstance(v, str) and bool(v))


def path(exists: bool, list_ok: bool = False) -> Kind:
    """A path (a string, or a Path from a script); `list_ok`: or a non-empty list of them."""
    def check(v: object, d: object) -> str | None:
        if list_ok and isinstance(v, (list, tuple)):
            return None if v and all(_a_path(p) for p in v) else \
                f"takes a model folder or a list of them (an ensemble), got {v!r}"
        return None if v is None or _a_path(v) else f"takes a path (or null), got {v!r}"
    return Kind(check, path="exists" if exists else "any")


def group(among: str) -> Kind:
    return Kind(lambda v, d: None if v is None or (isinstance(v, str) and v) else
                f"takes a group name or null, got {v!r}", groups=among)


def groups(among: str) -> Kind:
    def check(v: object, d: object) -> str | None:
        names = [v] if isinstance(v, str) else v
        ok = v is None or (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names))
        return None if ok else f"takes a list of group names (or null: all), got {v!r}"
    return Kind(check, groups=among)


def _device(v: object, d: object) -> str | None:
    if not isinstance(v, str) or not DEVICE.match(v):
        return f"takes 'auto', 'cpu', 'cuda', 'cuda:<n>' or 'mps', got {v!r}"
    if not v.startswith("cuda"):
        return None
    import torch  # only for a named GPU

    count, index = torch.cuda.device_count(), int(v.partition(":")[2] or 0)
    return f"asks for {v!r}, but torch sees {count} GPU(s) here; use 'auto' or 'cpu'" if index >= count else None


def _threshold(v: object, d: object) -> str | None:
    from lib.postprocess import ThresholdRule  # no torch

    try:
        ThresholdRule.parse(v)
    except ValueError as e:
        return str(e)
    return None


def tta(auto: bool) -> Kind:
    def check(v: object, d: object) -> str | None:
        from lib.predictor import TTA_MODES, parse_tta

        if auto and v == "auto":
            return None
        try:
            parse_tta(v)
        except ValueError:
            return f"takes one of {', '.join(TTA_MODES)}{', auto' if auto else ''} (or true/false), got {v!r}"
        return None
    return Kind(check)


DATA_DIR = Parameter("data_dir", Expression("str(paths.default_data_dir())"), path(exists=False),
                     "competition root: Kaggle input if present, else outputs/data/synthetic")


@dataclass(frozen=True)
class Schema:
    """One notebook's parameters, in the order of its parameters cell."""

    notebook: str
    parameters: tuple[Parameter, ...]

    @property
    def by_name(self) -> dict[str, Parameter]:
        return {p.name: p for p in self.parameters}


SCHEMAS: dict[str, Schema] = {s.notebook: s for s in (
    Schema("01_explore", (
        DATA_DIR,
        Parameter("output_dir", Expression('str(paths.outputs_dir() / "explore")'), path(exists=False),
                  "PNG figures and CSV tables (relative: to the project root)"),
        Parameter("groups", None, groups("any"),
                  'e.g. ["kidney_1_dense", "kidney_5"]; None: every group in the root'),
        Parameter("max_slices_sampled", 32, integer(1),
                  "evenly spaced slices per group for the intensity histograms"),
        Parameter("max_plane_slices", 128, integer(1),
                  "at most this many slices are read for an xz/yz plane (every k-th slice above it)"),
        Parameter("interactive", None, OPTIONAL_BOOLEAN,
                  "slice browser widgets; None: only when a live Jupyter frontend is attached"),
        Parameter("prediction_dir", None, path(exists=True),
                  "optional predicted masks <dir>/<group>/NNNN.tif for the browser (default: a threshold demo)"),
    )),
    Schema("02_train", (
        DATA_DIR,
        Parameter("output_dir", "outputs/train", path(exists=False),
                  "nnU-Net folders, the model, figures; relative paths are relative to the project root"),
        Parameter("resume_from", "auto", path(exists=False),
                  'interrupted run to go on with: "auto": one attached as input (Kaggle), None: never, or a folder'),
        Parameter("pretrained", None, path(exists=True), "Task008_HepaticVessel.zip (or its folder, or "
                  "lib.model.convert_v1 output); None: train from scratch"),
        Parameter("train_groups", None, groups("labelled"),
                  "None: kidney_1_dense, kidney_2, kidney_3_sparse (sparse groups included)"),
        Parameter("val_group", "kidney_3_dense", group("labelled"),
                  "dense labels; its images are held out of kidney_3_sparse's training slabs"),
        Parameter("epochs", 15, integer(1), "the seed recipe"),
        Parameter("iterations_per_epoch", 250, integer(1)),
        Parameter("val_iterations_per_epoch", 50, integer(1)),
        Parameter("initial_lr", 0.01, POSITIVE),
        Parameter("warmup_epochs", 1, integer(0)),
        Parameter("configuration", "hepatic", choice("configuration", sort=True),
                  '"hepatic": the Task008 network (seed recipe); "tiny": small network for CPU demos'),
        Parameter("patch_size", None, PATCH_SIZE,
                  "None: the hepatic patch on a GPU, a small valid one on the CPU"),
        Parameter("normalisation", "kidney", choice("normalisation"),
                  "\"kidney\": each kidney clipped and z-scored by its own statistics; \"dataset\": the seed's"),
        Parameter("loss", "dice_ce", choice("loss"),
                  '"dice_ce": nnU-Net\'s (seed recipe); "skeleton_recall" or "surface": + loss_weight x that term'),
        Parameter("loss_weight", 1.0, POSITIVE,
                  "weight of the skeleton-recall or surface-Dice term (lib.training.losses; docs/losses.md)"),
        Parameter("slab_depth", 128, integer(1),
                  "slices per nnU-Net case: bounds preprocessing memory (column preprocess_peak_gib below)"),
        Parameter("scratch_dir", None, path(exists=False),
                  "nnU-Net raw + preprocessed data (docs/disk.md); None: <output_dir>/nnunet"),
        Parameter("keep_raw_slabs", False, BOOLEAN,
                  "False: each raw slab is deleted once nnU-Net has preprocessed it (disk)"),
        Parameter("seed", 0, integer(0),
                  "python, numpy, torch, augmentation workers: the same seed gives the same model on the same machine"),
        Parameter("scale_range", [0.7, 1.4], LIST,
                  "scaling augmentation (nnU-Net default; larger means smaller objects); 0.95-1.8 mimics 63 µm"),
        Parameter("pseudo_label_rounds", 0, integer(0),
                  "0: the seed recipe; R: R more fine-tuning rounds on refined sparse labels (pseudo-labels)"),
        Parameter("sparse_label_share", {"kidney_2": 0.65, "kidney_3_sparse": 0.85}, TABLE,
                  "share of true vessels the given labels hold"),
        Parameter("budget_hours", "auto", HOURS,
                  'the training plan\'s limit: "auto": 11.5 h on Kaggle (a 12 h session), none elsewhere'),
        Parameter("device", "auto", Kind(_device), '"auto": the GPU when there is one, else the CPU'),
        Parameter("validation_tta", False, tta(auto=False),
                  "mirroring test-time augmentation for the final validation (8x slower)"),
    )),
    Schema("03_infer", (
        DATA_DIR,
        Parameter("model_dir", None, path(exists=True, list_ok=True), "notebook 02's model folder or a list of them "
                  "(an ensemble); None: Kaggle input's, else outputs/train's"),
        Parameter("output_dir", "outputs/infer", path(exists=False),
                  "probabilities, masks, figures, submission.csv; relative to the project root"),
        Parameter("submission_file", None, path(exists=False),
                  "None: <output_dir>/submission.csv (on Kaggle: /kaggle/working/submission.csv)"),
        Parameter("test_groups", None, groups("test"), "None: every group under test/"),
        Parameter("val_group", "kidney_3_dense", group("labelled"),
                  'for the "tune" threshold (and a fixed threshold\'s curve); None to skip'),
        Parameter("threshold", "model", Kind(_threshold), '"model" (stored by notebook 02), a number (0.5 is an '
                  'argmax), "tune" (on val_group) or "top:0.002"'),
        Parameter("min_component_size", 0, integer(0),
                  "drop 26-connected components smaller than this (voxels); 0 keeps everything"),
        Parameter("tta", "flips", tta(auto=True), '"none", "flips" (mirroring, 8 passes; True: flips, False: none), '
                  '"axes", "axes+flips" or "auto"'),
        Parameter("budget_hours", 9.0, HOURS,
                  'for tta "auto": the strongest TTA and ensemble size projected to fit, with a 25% margin'),
        Parameter("resample", True, BOOLEAN,
                  "resample kidneys whose voxel size differs from training (> 2%) to the training spacing and back"),
        Parameter("tile_step", 0.5, FRACTION, "sliding-window step as a fraction of the patch"),
        Parameter("scratch_dir", None, path(exists=False), "probabilities (float16) and masks, about 3 B per voxel "
                  "on disk (+6 B for axes); None: <output_dir>"),
        Parameter("device", "auto", Kind(_device), '"auto": every visible GPU (one worker each), else the CPU; or one '
                  'device ("cpu", "cuda:0")'),
        Parameter("devices", None, DEVICES, 'None: as `device`; or a list of devices, e.g. ["cuda:0", "cuda:1"] '
                  "(one worker process each)"),
    )),
)}


def problem(notebook: str, name: str, value: object) -> str | None:
    """What is wrong with `value` for `notebook`'s parameter `name`, or None when it fits (KeyError: no such name)."""
    parameter = SCHEMAS[notebook].by_name[name]
    if isinstance(value, dict) and not isinstance(parameter.default, dict):
        return f"takes a single value, not a table, got {value!r}"
    return parameter.kind.check(value, parameter.default)


def check(notebook: str, namespace: Mapping[str, object]) -> None:
    """Every parameter of `notebook` as the notebook holds it (`globals()`), checked before any work; a ValueError
    names each bad one."""
    found = {p.name: problem(notebook, p.name, namespace[p.name]) for p in SCHEMAS[notebook].parameters
             if p.name in namespace}
    bad = [f"{name}: {why}" for name, why in found.items() if why]
    missing = [p.name for p in SCHEMAS[notebook].parameters if p.name not in namespace]
    if missing:
        bad.append(f"not set: {', '.join(missing)}")
    if bad:
        raise ValueError(f"notebook {notebook}'s parameters: " + "; ".join(bad))
