"""Kaggle inputs found by what they contain, not by where Kaggle mounts them (docs/kaggle.md: the walk, the kinds
and the order among several candidates). Only the standard library: the Kaggle setup cell embeds this file's source
to find the wheels before the project is installed. `KAGGLE_INPUT_DIR` relocates `/kaggle/input` (tests).
"""
import os
from collections.abc import Callable
from pathlib import Path

COMPETITION_SLUG = "blood-vessel-segmentation"
WHEELS_MANIFEST = "sennet-wheels.json"
HEPATIC = "Task008_HepaticVessel"
V1_CONFIGURATIONS = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")
MAX_DEPTH = 12  # a model inside a training run attached as a Kaggle Model sits 11 folders deep
PRUNED = ("images", "labels", "__pycache__", "site-packages")  # never walked (tens of thousands of slices)
INPUT_KINDS = {
    "competition": f"competition data (a folder with sample_submission.csv and test/, e.g. {COMPETITION_SLUG})",
    "wheels": f"wheels dataset (a folder with {WHEELS_MANIFEST})",
    "pretrained": f"hepatic checkpoint ({HEPATIC}.zip or its extracted folder)",
    "model": "model folder (plans.json and fold_0/checkpoint_final.pth)",
    "run": "training run of notebook 02 (a folder with nnunet/results/ or rounds/)",
}
LEAVES = ("competition", "wheels", "pretrained", "model")  # not walked further once recognised


def kaggle_input() -> Path:
    """Kaggle's input folder; `KAGGLE_INPUT_DIR` relocates it (tests lay out a fake `/kaggle/input`)."""
    return Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))


def classify_folder(folder: Path, dirs: list[str], files: set[str]) -> list[tuple[str, Path]]:
    """[(kind, path)] of what `folder` is or holds, judged from its entries (a run also holds model folders)."""
    found = []
    if "sample_submission.csv" in files and "test" in dirs:
        found.append(("competition", folder))
    if WHEELS_MANIFEST in files:
        found.append(("wheels", folder))
    if f"{HEPATIC}.zip" in files:
        found.append(("pretrained", folder / f"{HEPATIC}.zip"))
    if (folder.name == HEPATIC and folder.parent.name not in V1_CONFIGURATIONS) \
            or ("3d_fullres" in dirs and (folder / "3d_fullres" / HEPATIC).is_dir()):
        found.append(("pretrained", folder))
    if "plans.json" in files and (folder / "fold_0" / "checkpoint_final.pth").is_file():
        found.append(("model", folder))
    if (folder / "nnunet" / "results").is_dir() or "rounds" in dirs:
        found.append(("run", folder))
    return found


def _entries(folder: Path) -> tuple[list[str], set[str]]:
    """(sorted sub-folder names, file names) of `folder`, symlinks followed; empty when unreadable (an entry that
    cannot be read is neither)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return [], set()
    return sorted(n for n in names if os.path.isdir(folder / n)), {n for n in names if os.path.isfile(folder / n)}


def scan_inputs(root: Path | str | None = None) -> dict[str, list[Path]]:
    """{kind: [paths]} of everything under `root` (default: the Kaggle input), each kind in the documented order."""
    root = Path(root) if root is not None else kaggle_input()
    found = {kind: [] for kind in INPUT_KINDS}
    seen, stack = set(), [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:  # a symlinked alias of a folder already walked
            continue
        seen.add(real)
        dirs, files = _entries(folder)
        kinds = classify_folder(folder, dirs, files)
        for kind, path in kinds:
            if kind == "run" and any(path.is_relative_to(outer) for outer in found["run"]):
                continue  # a round inside a run: the run is what resumes
            found[kind].append(path)  # each folder is walked once, so each path comes once
        if depth < MAX_DEPTH and not any(kind in LEAVES for kind, _ in kinds):
            stack += [(folder / d, depth + 1) for d in reversed(dirs) if d not in PRUNED and not d.startswith(".")]
    for kind, paths in found.items():
        paths.sort(key=lambda p: (kind == "competition" and p.name != COMPETITION_SLUG, len(p.parts), str(p)))
    return found


def describe_inputs(root: Path, limit: int = 8) -> str:
    """What `root` holds two levels deep, on one line (for find_input's 'not found' messages)."""
    if not root.is_dir():
        return f"{root} does not exist"
    parts = []
    for first in sorted(root.iterdir())[:limit]:
        if first.is_dir():
            below = sorted(p.name + ("/" if p.is_dir() else "") for p in first.iterdir())
            more = f", +{len(below) - limit} more" if len(below) > limit else ""
            parts.append(f"{first.name}/{{{', '.join(below[:limit])}{more}}}")
        else:
            parts.append(first.name)
    return f"{root} holds: " + ("; ".join(parts) if parts else "nothing")


def find_input(kind: str, root: Path | str | None = None, required: bool = False,
               log: Callable[[str], None] | None = print) -> Path | None:
    """The first `kind` (see INPUT_KINDS) under `root` in the documented order, its choice printed through `log`;
    None when there is none, or with `required` a FileNotFoundError on one line saying what `root` holds."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"unknown input kind {kind!r}; known: {', '.join(INPUT_KINDS)}")
    root = Path(root) if root is not None else kaggle_input()
    candidates = scan_inputs(root)[kind]
    say = log or (lambda message: None)
    if not candidates:
        message = f"no {INPUT_KINDS[kind]} under {root}; {describe_inputs(root)}"
        if required:
            raise FileNotFoundError(message)
        say(message)
        return None
    others = f" (first of {len(candidates)}: also {', '.join(map(str, candidates[1:]))})" if candidates[1:] else ""
    say(f"{kind}: {candidates[0]}{others}")
    return candidates[0]
