"""Build the Kaggle bundle: two notebooks ready to push and the datasets they read, all installable offline.

`python -m lib.runs.kaggle --out outputs/kaggle [--user U] [--no-wheels] [--model-dir M] [--pretrained ZIP]`
(`make kaggle`) writes:

    <out>/datasets/lib/        dataset-metadata.json + lib/ (this package, no __pycache__)
    <out>/datasets/wheels/     dataset-metadata.json + *.whl + requirements.txt (every wheel the notebooks need,
                               pinned) + requirements-kernel.txt (ipykernel, for running the notebooks on a bare
                               Python elsewhere) + sennet-wheels.json (manifest)
    <out>/datasets/model/      only with --model-dir: a trained model folder (plans.json, fold_0/checkpoint_final.pth)
    <out>/datasets/pretrained/ only with --pretrained: the nnU-Net v1 Task008_HepaticVessel archive
    <out>/kernels/train/       kernel-metadata.json + 02_train.ipynb
    <out>/kernels/infer/       kernel-metadata.json + 03_infer.ipynb (GPU on, internet off: a code competition)

The notebooks are the project's notebooks 02 and 03 transformed with nbformat (never copied into lib): outputs
stripped, a "Kaggle setup" code cell inserted before the first code cell (it installs the wheels dataset with
`pip install --no-index`, skipped when every pinned package is already installed), and the `parameters` cell's
defaults pointed at `/kaggle/input/...` and `/kaggle/working/...`. `KAGGLE_INPUT_DIR` and `KAGGLE_WORKING_DIR`
relocate both folders (tests run the bundled notebooks away from Kaggle).

Wheels: the dependency closure of the project's requirements (requirements.txt minus torch/torchvision, which the
Kaggle image has, and minus the development tools) at the versions installed in the project's environment (its
pins), walked through the installed packages' metadata with the markers of the Kaggle runtime (Linux x86_64,
CPython 3.11). torch, torchvision, triton, nvidia-* and cuda-* are never bundled. Wheels are downloaded once into
a cache (`outputs/kaggle-wheel-cache`) for that platform (`pip download --platform ... --python-version 3.11`);
packages published only as sdists (pure Python) are built into wheels there with `pip wheel --no-deps`.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lib import paths

DEFAULT_USER = "your-kaggle-username"  # a placeholder: pass --user with your Kaggle user name
COMPETITION = paths.COMPETITION
NOTEBOOKS_DIR = paths.PROJECT_ROOT / "notebooks"
REQUIREMENTS = paths.PROJECT_ROOT / "requirements.txt"

# Kaggle slugs (the dataset or kernel name after "<user>/"); each title below turns into exactly this slug.
LIB_SLUG, WHEELS_SLUG, MODEL_SLUG = "sennet-vessels-lib", "sennet-vessels-wheels", "sennet-vessels-model"
PRETRAINED_SLUG = "task008-hepaticvessel"  # as configs/kaggle.toml expects
TRAIN_SLUG, INFER_SLUG = "sennet-vessels-train", "sennet-vessels-infer"
WHEELS_MANIFEST = "sennet-wheels.json"  # marks the wheels dataset under the Kaggle input
PRETRAINED_NAME = "Task008_HepaticVessel"

# requirements.txt entries that are not bundled: on the Kaggle image already, or development tools only.
KAGGLE_IMAGE = ("torch", "torchvision")
DEV_ONLY = ("papermill", "nbformat", "pytest", "pytest-timeout", "ipykernel", "ipywidgets")
KERNEL_ROOTS = ("ipykernel",)  # bundled too (requirements-kernel.txt), not installed by the notebooks
# Never bundled, also as dependencies: huge, CUDA-specific, and part of the Kaggle image.
EXCLUDED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")

# The Kaggle runtime the wheels are for.
PYTHON_VERSION = (3, 11)
GLIBC_MAX = 35  # Kaggle's image is Ubuntu 22.04 (glibc 2.35)
PLATFORMS = ([f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MAX, 16, -1)]
             + ["manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64",
                "manylinux1_x86_64"])
MARKER_ENV = {"implementation_name": "cpython", "implementation_version": "3.11.0", "os_name": "posix",
              "platform_machine": "x86_64", "platform_python_implementation": "CPython", "platform_release": "",
              "platform_system": "Linux", "platform_version": "", "python_full_version": "3.11.0",
              "python_version": "3.11", "sys_platform": "linux"}


class BundleError(RuntimeError):
    """The bundle cannot be built (environment out of date, a wheel missing, a notebook changed shape)."""


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def slugify(title: str) -> str:
    """The slug Kaggle derives from a title (lower case, runs of other characters -> '-')."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def working_dir() -> Path:
    """Kaggle's working folder; `KAGGLE_WORKING_DIR` relocates `/kaggle/working`."""
    return Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))


# ----------------------------------------------------------------------------------------------------------
# The Kaggle setup cell and the parameter defaults of the bundled notebooks
# ----------------------------------------------------------------------------------------------------------

SETUP_TAG = "kaggle-setup"
SETUP_CELL = '''\
# Kaggle setup (added by `python -m lib.runs.kaggle`): install the project's dependencies offline from the wheels
# dataset (pip --no-index), unless every pinned package is installed already. KAGGLE_INPUT_DIR and
# KAGGLE_WORKING_DIR relocate /kaggle/input and /kaggle/working (the project's tests run this notebook elsewhere).
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
KAGGLE_WORKING.mkdir(parents=True, exist_ok=True)
# Large intermediate files (nnU-Net data, probabilities) stay out of /kaggle/working and its 20 GB limit.
KAGGLE_SCRATCH = Path(os.environ.get("KAGGLE_SCRATCH_DIR", "/tmp/sennet-vessels"))


def unmet_requirements(requirements: Path) -> list[str]:
    """The `name==version` lines of `requirements` whose package is missing or installed at another version."""
    unmet = []
    for line in requirements.read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if not name:
            continue
        try:
            have = importlib.metadata.version(name.strip())
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have is None or (version and have != version.strip()):
            unmet.append(f"{name.strip()} {have or '(missing)'} -> {version.strip() or 'any'}")
    return unmet


WHEELS = next((p.parent for pattern in ("*/%(manifest)s", "*/*/%(manifest)s")
               for p in sorted(KAGGLE_INPUT.glob(pattern))), None)
print(f"python {sys.version.split()[0]} at {sys.executable}")
if WHEELS is None:
    print(f"no wheels dataset (a folder with %(manifest)s) under {KAGGLE_INPUT}: installing nothing "
          "(attach the '%(wheels_slug)s' dataset if the imports below fail)")
else:
    unmet = unmet_requirements(WHEELS / "requirements.txt")
    if not unmet:
        print(f"every package pinned in {WHEELS / 'requirements.txt'} is installed: nothing to install")
    else:
        print(f"installing {len(unmet)} packages offline from {WHEELS}: " + ", ".join(unmet))
        start = time.perf_counter()
        # --no-compile: byte-compiling every installed file takes 5x longer than the install; imports compile
        # what they use.
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(WHEELS),
                              "--no-compile", "--disable-pip-version-check", "-r", str(WHEELS / "requirements.txt")],
                             capture_output=True, text=True)
        if pip.returncode != 0:
            print(pip.stdout[-5000:], pip.stderr[-5000:], sep="\\n")
            raise RuntimeError(f"offline install from {WHEELS} failed (the wheels are for CPython %(python)s on "
                               f"manylinux x86_64; this is Python {sys.version.split()[0]} on {sys.platform})")
        importlib.invalidate_caches()
        still = unmet_requirements(WHEELS / "requirements.txt")
        if still:
            raise RuntimeError(f"still not installed after pip install: {still}")
        print(pip.stdout.strip().splitlines()[-1] if pip.stdout.strip() else "installed")
        print(f"offline install took {time.perf_counter() - start:.0f} s")
'''


def setup_cell_source(wheels_slug: str = WHEELS_SLUG) -> str:
    return SETUP_CELL % {"manifest": WHEELS_MANIFEST, "wheels_slug": wheels_slug,
                         "python": ".".join(map(str, PYTHON_VERSION))}


# name -> (new right-hand side, new comment); the names of the setup cell (KAGGLE_INPUT, KAGGLE_WORKING) are in scope.
TRAIN_PARAMETERS = {
    "data_dir": (f'str(KAGGLE_INPUT / "{COMPETITION}")', "the competition data attached to the notebook"),
    "output_dir": ('str(KAGGLE_WORKING / "train")',
                   "nnU-Net folders, the model, figures (in the notebook's output)"),
    "scratch_dir": ('str(KAGGLE_SCRATCH / "train")', "nnU-Net raw + preprocessed data, outside the 20 GB /kaggle/working"),
    "pretrained": (
        f'next((str(p) for pattern in ("*/{PRETRAINED_NAME}.zip", "*/*/{PRETRAINED_NAME}.zip", '
        f'"*/{PRETRAINED_NAME}", "*/*/{PRETRAINED_NAME}") for p in sorted(KAGGLE_INPUT.glob(pattern))), None)',
        f"{PRETRAINED_NAME}.zip (or its extracted folder) in an attached dataset; None: train from scratch"),
}
INFER_PARAMETERS = {
    "data_dir": (f'str(KAGGLE_INPUT / "{COMPETITION}")', "the competition data (the hidden test at scoring time)"),
    "model_dir": ("None", "None: the first model folder (plans.json + fold_0/checkpoint_final.pth) in an attached "
                          "dataset, found by fine_tune.find_model_dir"),
    "output_dir": ('str(KAGGLE_WORKING / "infer")', "probabilities, masks, figures, scores"),
    "submission_file": ('str(KAGGLE_WORKING / "submission.csv")', "what the competition scores"),
    "scratch_dir": ('str(KAGGLE_SCRATCH / "infer")', "probabilities and masks, outside the 20 GB /kaggle/working"),
}
KAGGLE_CONFIG = paths.PROJECT_ROOT / "configs" / "kaggle.toml"


def config_parameters(notebook: str, paths_set_here: Mapping[str, object], config: Path = KAGGLE_CONFIG
                      ) -> dict[str, tuple[str, str]]:
    """The non-path settings of `notebook` in configs/kaggle.toml (epochs, threshold, ...) as overrides, so the
    bundle and `lib.runs.pipeline --config configs/kaggle.toml` run the same recipe."""
    from lib.runs.pipeline import load_config

    settings = load_config(config).get("notebooks", {}).get(notebook, {})
    return {k: (repr(v), f"from {config.name}") for k, v in settings.items() if k not in paths_set_here}


def override_parameters(source: str, overrides: Mapping[str, tuple[str, str]]) -> str:
    """The parameters cell `source` with the right-hand sides of `overrides` replaced (one line each)."""
    lines = source.splitlines()
    for name, (value, comment) in overrides.items():
        hits = [i for i, line in enumerate(lines) if re.match(rf"{re.escape(name)}\s*=", line)]
        if len(hits) != 1:
            raise BundleError(f"parameters cell: expected one assignment of {name!r}, found {len(hits)}")
        lines[hits[0]] = f"{name} = {value}  # Kaggle: {comment}"
    header = "# Kaggle defaults (set by lib.runs.kaggle): inputs under KAGGLE_INPUT, outputs under KAGGLE_WORKING"
    return "\n".join([header, *lines])


def kaggle_notebook(source: Path | str, overrides: Mapping[str, tuple[str, str]], wheels_slug: str = WHEELS_SLUG):
    """The project's notebook `source` made ready for Kaggle (see the module docstring); a NotebookNode."""
    import nbformat

    nb = nbformat.read(str(source), as_version=4)
    for cell in nb.cells:
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise BundleError(f"{source}: expected exactly one cell tagged 'parameters', found {len(tagged)}")
    tagged[0].source = override_parameters(tagged[0].source, overrides)
    setup = nbformat.v4.new_code_cell(setup_cell_source(wheels_slug), metadata={"tags": [SETUP_TAG]})
    if nb.nbformat_minor >= 5:
        setup["id"] = SETUP_TAG
    else:
        setup.pop("id", None)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code, setup)
    nbformat.validate(nb)
    return nb


# ----------------------------------------------------------------------------------------------------------
# Wheels: the dependency closure, its download cache and the wheels dataset
# ----------------------------------------------------------------------------------------------------------

def requirement_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """`name==version` lines of a requirements file as {canonical name: version}; other lines are ignored."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def _installed(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BundleError(f"{name} is not installed in this environment ({sys.executable}); the wheel set is "
                          "taken from the project's environment: run `make setup` and build with .venv/bin/python") from exc


def dependency_closure(roots: Iterable[str], pins: Mapping[str, str] | None = None,
                       exclude: re.Pattern = EXCLUDED) -> dict[str, str]:
    """{canonical name: version} of `roots` and everything they require on the Kaggle runtime (markers evaluated
    for Linux x86_64 CPython 3.11, extras followed), read from the installed packages' metadata. Names matching
    `exclude` are left out and not walked. A pinned version must be the installed one."""
    from packaging.requirements import Requirement

    pins = dict(pins or {})
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(canonical(r), "") for r in roots]
    while todo:
        name, extra = todo.pop()
        if exclude.match(name) or (name, extra) in seen:
            continue
        seen.add((name, extra))
        dist = _installed(name)
        version = dist.version
        if name in pins and pins[name] != version:
            raise BundleError(f"{name}: requirements.txt pins {pins[name]} but {version} is installed; "
                              "run `make setup` first")
        found[name] = version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({**MARKER_ENV, "extra": extra}):
                continue
            todo.append((canonical(req.name), ""))
            todo += [(canonical(req.name), canonical(e)) for e in req.extras]
    return dict(sorted(found.items()))


def bundled_roots(pins: Mapping[str, str]) -> list[str]:
    """What the notebooks need from requirements.txt: everything but the Kaggle image's torch and the dev tools."""
    return [n for n in pins if n not in KAGGLE_IMAGE and n not in DEV_ONLY]


def target_tags() -> set:
    """Wheel tags pip accepts on the Kaggle runtime (CPython 3.11, manylinux x86_64, also plain linux_x86_64)."""
    from packaging import tags

    interpreter = f"cp{PYTHON_VERSION[0]}{PYTHON_VERSION[1]}"
    platforms = [*PLATFORMS, "linux_x86_64"]
    return {*tags.cpython_tags(PYTHON_VERSION, [interpreter], platforms),
            *tags.compatible_tags(PYTHON_VERSION, interpreter, platforms)}


def _wheel_files(folder: Path) -> dict[tuple[str, str], Path]:
    """{(canonical name, version): wheel} of the wheels in `folder` that install on the Kaggle runtime."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    accepted, out = target_tags(), {}
    for path in sorted(folder.glob("*.whl")):
        try:
            name, version, _, wheel_tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if wheel_tags & accepted:
            out.setdefault((canonical(name), str(version)), path)
    return out


def _lookup(wheels: Mapping[tuple[str, str], Path], name: str, version: str) -> Path | None:
    from packaging.version import Version

    for (n, v), path in wheels.items():
        if n == name and Version(v) == Version(version):
            return path
    return None


def _pip(*args: str, env: Mapping[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BundleError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def fetch_wheels(lock: Mapping[str, str], cache: Path, log=print) -> tuple[dict[str, Path], list[str]]:
    """A wheel for every `lock` entry, from `cache` or downloaded into it: ({name: wheel}, [downloaded names])."""
    cache.mkdir(parents=True, exist_ok=True)
    cached = _wheel_files(cache)
    wanted = {n: v for n, v in lock.items() if _lookup(cached, n, v) is None}
    if wanted:
        log(f"downloading {len(wanted)} packages for CPython {'.'.join(map(str, PYTHON_VERSION))} manylinux x86_64 "
            f"into {cache} ...")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            tmp = Path(tmp)
            platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
            # --no-deps: the closure is already complete; it also lets pip fall back to sdists for pure-Python
            # packages that publish no wheel (built below).
            _pip("download", "--no-deps", "--prefer-binary", "--dest", str(tmp / "dl"), "--implementation", "cp",
                 "--python-version", ".".join(map(str, PYTHON_VERSION)), "--abi",
                 f"cp{PYTHON_VERSION[0]}{PYTHON_VERSION[1]}", *platform_args,
                 *[f"{n}=={v}" for n, v in wanted.items()])
            sdists = [p for p in (tmp / "dl").iterdir() if not p.name.endswith(".whl")]
            for sdist in sdists:
                log(f"  building a wheel from {sdist.name}")
                _pip("wheel", "--no-deps", "--wheel-dir", str(tmp / "dl"), str(sdist))
            for path in (tmp / "dl").glob("*.whl"):
                os.replace(path, cache / path.name)
        log(f"downloaded in {time.perf_counter() - start:.0f} s")
    files = _wheel_files(cache)
    missing = [f"{n}=={v}" for n, v in lock.items() if _lookup(files, n, v) is None]
    if missing:
        raise BundleError(f"no wheel for the Kaggle runtime (CPython 3.11 manylinux x86_64) for: {missing}")
    return {n: _lookup(files, n, v) for n, v in lock.items()}, sorted(wanted)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def dataset_metadata(user: str, slug: str, title: str, description: str) -> dict:
    """Kaggle's dataset-metadata.json."""
    return {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": "other"}], "description": description}


def kernel_metadata(user: str, slug: str, title: str, code_file: str, datasets: Sequence[str],
                    internet: bool = False) -> dict:
    """Kaggle's kernel-metadata.json: a private GPU notebook on the competition."""
    return {"id": f"{user}/{slug}", "title": title, "code_file": code_file, "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
            "enable_internet": internet, "dataset_sources": list(datasets), "competition_sources": [COMPETITION],
            "kernel_sources": [], "model_sources": []}


def build_wheels(folder: Path, user: str, cache: Path, log=print) -> dict:
    """The wheels dataset in `folder` (replaced); returns its manifest."""
    pins = requirement_pins()
    notebook_lock = dependency_closure(bundled_roots(pins), pins)
    kernel_lock = {n: v for n, v in dependency_closure(KERNEL_ROOTS, pins).items() if n not in notebook_lock}
    wheels, downloaded = fetch_wheels({**notebook_lock, **kernel_lock}, cache, log)
    _fresh(folder)
    for wheel in wheels.values():
        _link_or_copy(wheel, folder / wheel.name)
    note = "# Generated by `python -m lib.runs.kaggle`: {}\n"
    (folder / "requirements.txt").write_text(
        note.format("every package notebooks 02/03 import beyond torch/torchvision, pinned (the project's versions)")
        + "".join(f"{n}=={v}\n" for n, v in notebook_lock.items()))
    (folder / "requirements-kernel.txt").write_text(
        note.format("ipykernel and what it needs beyond requirements.txt (not installed on Kaggle)")
        + "".join(f"{n}=={v}\n" for n, v in kernel_lock.items()))
    manifest = {"python": ".".join(map(str, PYTHON_VERSION)), "platforms": PLATFORMS,
                "excluded": EXCLUDED.pattern, "roots": bundled_roots(pins), "kernel_roots": list(KERNEL_ROOTS),
                "wheels": sorted(w.name for w in wheels.values()),
                "bytes": sum(w.stat().st_size for w in wheels.values()), "downloaded": downloaded,
                "install": "pip install --no-index --find-links <this folder> -r <this folder>/requirements.txt"}
    _write_json(folder / WHEELS_MANIFEST, manifest)
    _write_json(folder / "dataset-metadata.json", dataset_metadata(
        user, WHEELS_SLUG, "SenNet Vessels Wheels",
        "Offline wheels (CPython 3.11, manylinux x86_64) for the SenNet vessel notebooks: nnunetv2 and everything "
        "they import beyond torch/torchvision. `pip install --no-index --find-links . -r requirements.txt`."))
    return manifest


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(paths.PROJECT_ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rev.stdout.strip() or None


def build_lib(folder: Path, user: str) -> int:
    """The lib dataset in `folder` (replaced): a copy of this package without caches; returns the file count."""
    _fresh(folder)
    shutil.copytree(paths.PROJECT_ROOT / "lib", folder / "lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
    revision = _git_revision()
    _write_json(folder / "dataset-metadata.json", dataset_metadata(
        user, LIB_SLUG, "SenNet Vessels Lib",
        "The `lib` package of the SenNet + HOA vessel segmentation project (shared code of its notebooks)"
        + (f", revision {revision}." if revision else ".")))
    return sum(1 for p in (folder / "lib").rglob("*") if p.is_file())


def build_model(folder: Path, user: str, model_dir: Path) -> None:
    """A model dataset from a trained model folder (plans.json, dataset.json, fold_*/checkpoint_final.pth)."""
    model_dir = Path(model_dir)
    checkpoints = sorted(model_dir.glob("fold_*/checkpoint_final.pth"))
    if not (model_dir / "plans.json").is_file() or not checkpoints:
        raise BundleError(f"{model_dir}: not a model folder (needs plans.json and fold_*/checkpoint_final.pth)")
    _fresh(folder)
    for path in [model_dir / "plans.json", model_dir / "dataset.json", *checkpoints]:
        if path.is_file():
            _link_or_copy(path, folder / "model" / path.relative_to(model_dir))
    _write_json(folder / "dataset-metadata.json", dataset_metadata(
        user, MODEL_SLUG, "SenNet Vessels Model",
        f"A fine-tuned nnU-Net v2 model folder for the SenNet vessel notebooks (from {model_dir.name})."))


def build_pretrained(folder: Path, user: str, archive: Path) -> None:
    """A dataset holding the nnU-Net v1 Task008_HepaticVessel archive for notebook 02."""
    archive = Path(archive)
    if not archive.is_file():
        raise BundleError(f"{archive}: pretrained archive not found")
    _fresh(folder)
    _link_or_copy(archive, folder / f"{PRETRAINED_NAME}.zip")
    _write_json(folder / "dataset-metadata.json", dataset_metadata(
        user, PRETRAINED_SLUG, "Task008 HepaticVessel",
        "nnU-Net v1 Task008_HepaticVessel pretrained model archive (as published by the nnU-Net authors)."))


@dataclass
class Bundle:
    """What `build` wrote."""

    out: Path
    user: str
    folders: dict[str, Path] = field(default_factory=dict)  # lib, wheels, model, pretrained, train, infer
    lib_files: int = 0
    wheels: dict | None = None  # the wheels manifest (None with --no-wheels)
    seconds: float = 0.0

    def report(self) -> str:
        rel = {k: _display(v) for k, v in self.folders.items()}
        lines = [f"Kaggle bundle in {_display(self.out)} ({self.seconds:.0f} s):",
                 f"  {rel['lib']}: dataset {self.user}/{LIB_SLUG}, lib/ ({self.lib_files} files)"]
        if self.wheels is not None:
            lines.append(f"  {rel['wheels']}: dataset {self.user}/{WHEELS_SLUG}, {len(self.wheels['wheels'])} wheels, "
                         f"{self.wheels['bytes'] / 2**20:.0f} MiB ({len(self.wheels['downloaded'])} downloaded now)")
        else:
            lines.append(f"  {rel['wheels']}: not rebuilt (--no-wheels)")
        if "model" in rel:
            lines.append(f"  {rel['model']}: dataset {self.user}/{MODEL_SLUG}")
        if "pretrained" in rel:
            lines.append(f"  {rel['pretrained']}: dataset {self.user}/{PRETRAINED_SLUG}")
        lines += [f"  {rel['train']}: notebook {self.user}/{TRAIN_SLUG} (02_train.ipynb)",
                  f"  {rel['infer']}: notebook {self.user}/{INFER_SLUG} (03_infer.ipynb, internet off)", "",
                  "Next steps (the kaggle CLI, `pip install kaggle`, with ~/.kaggle/kaggle.json):"]
        if self.user == DEFAULT_USER:
            lines.append(f"  0. rebuild with --user <your Kaggle user name> ('{DEFAULT_USER}' is a placeholder)")
        lines += [f"  1. kaggle datasets create -p {rel['lib']} --dir-mode zip      (later: kaggle datasets version "
                  f"-p {rel['lib']} --dir-mode zip -m 'update')",
                  f"  2. kaggle datasets create -p {rel['wheels']}"]
        if "pretrained" in rel:
            lines.append(f"     kaggle datasets create -p {rel['pretrained']}")
        lines.append(f"  3. kaggle kernels push -p {rel['train']}      (train on Kaggle's GPU; or train elsewhere)")
        if "model" in rel:
            lines.append(f"  4. kaggle datasets create -p {rel['model']} --dir-mode zip")
        else:
            lines += [f"  4. make the trained model a dataset {self.user}/{MODEL_SLUG}: rebuild with --model-dir "
                      "<train output>/nnunet/results/<dataset>/FineTuneTrainer__nnUNetPlans__3d_fullres, then",
                      f"     kaggle datasets create -p {_display(self.out / 'datasets' / 'model')} --dir-mode zip",
                      "     (or make a dataset of the training notebook's output on Kaggle, and name that dataset in "
                      f"{rel['infer']}/kernel-metadata.json; notebook 03 finds the model folder at any depth)"]
        lines.append(f"  5. kaggle kernels push -p {rel['infer']}; then submit that notebook to the competition "
                     "(Kaggle UI: Submit, or kaggle competitions submit -k <kernel> -v <version>)")
        return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def build(out: Path | str, user: str = DEFAULT_USER, wheels: bool = True, wheel_cache: Path | str | None = None,
          model_dir: Path | str | None = None, pretrained: Path | str | None = None,
          pretrained_dataset: str | None = None, log=print) -> Bundle:
    """Write the Kaggle bundle into `out` (see the module docstring); folders it owns are replaced."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", user):
        raise BundleError(f"--user {user!r}: expected a Kaggle user name")
    start = time.perf_counter()
    out = Path(out)
    datasets, kernels = out / "datasets", out / "kernels"
    bundle = Bundle(out=out, user=user, folders={"lib": datasets / "lib", "wheels": datasets / "wheels",
                                                  "train": kernels / "train", "infer": kernels / "infer"})
    bundle.lib_files = build_lib(datasets / "lib", user)
    if wheels:
        cache = Path(wheel_cache) if wheel_cache else paths.outputs_dir() / "kaggle-wheel-cache"
        bundle.wheels = build_wheels(datasets / "wheels", user, cache, log)
    if model_dir is not None:
        build_model(datasets / "model", user, Path(model_dir))
        bundle.folders["model"] = datasets / "model"
    if pretrained is not None:
        build_pretrained(datasets / "pretrained", user, Path(pretrained))
        bundle.folders["pretrained"] = datasets / "pretrained"
        pretrained_dataset = pretrained_dataset or f"{user}/{PRETRAINED_SLUG}"
    common = [f"{user}/{LIB_SLUG}", f"{user}/{WHEELS_SLUG}"]
    specs = [("train", "02_train", TRAIN_SLUG, "SenNet Vessels Train", TRAIN_PARAMETERS,
              common + ([pretrained_dataset] if pretrained_dataset else [])),
             ("infer", "03_infer", INFER_SLUG, "SenNet Vessels Infer", INFER_PARAMETERS,
              common + [f"{user}/{MODEL_SLUG}"])]
    import nbformat

    for key, name, slug, title, overrides, sources in specs:
        folder = _fresh(kernels / key)
        overrides = {**config_parameters(name, overrides), **overrides}
        nbformat.write(kaggle_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", overrides), str(folder / f"{name}.ipynb"))
        _write_json(folder / "kernel-metadata.json", kernel_metadata(user, slug, title, f"{name}.ipynb", sources))
    bundle.seconds = time.perf_counter() - start
    return bundle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.runs.kaggle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=paths.outputs_dir() / "kaggle", help="bundle folder")
    parser.add_argument("--user", default=DEFAULT_USER, help=f"your Kaggle user name (default: the placeholder "
                                                             f"{DEFAULT_USER!r})")
    parser.add_argument("--no-wheels", action="store_true", help="do not (re)build the wheels dataset")
    parser.add_argument("--wheel-cache", type=Path, default=None,
                        help="download cache (default: outputs/kaggle-wheel-cache)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a trained model folder to package as the model dataset (notebook 02's model folder)")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help=f"the {PRETRAINED_NAME}.zip archive to package as a dataset for notebook 02")
    parser.add_argument("--pretrained-dataset", default=None,
                        help="an existing Kaggle dataset (owner/slug) holding the archive, attached to notebook 02")
    args = parser.parse_args(argv)
    try:
        bundle = build(args.out, args.user, wheels=not args.no_wheels, wheel_cache=args.wheel_cache,
                       model_dir=args.model_dir, pretrained=args.pretrained,
                       pretrained_dataset=args.pretrained_dataset)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(bundle.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
