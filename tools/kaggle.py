"""Build the Kaggle bundle: two notebooks ready to push and the datasets they read, all installable offline.

`python -m tools.kaggle --out outputs/kaggle [--user U] [--python 3.11 ...] [--machine-shape S] [--no-wheels]
[--model-dir M] [--pretrained ZIP]` (`make kaggle`) writes:

    <out>/datasets/wheels/     dataset-metadata.json + sennet-wheels.json (manifest) + *.whl: this project as a
                               wheel (`lib` alone: the stand-ins and tooling live in tools/) and, for each
                               CPython (default 3.12 and 3.11; --python 3.10 etc.; manylinux x86_64), everything
                               it needs beyond the Kaggle image's torch (pure-Python wheels once)
    <out>/datasets/model/      only with --model-dir: a trained model folder (plans.json, fold_0/checkpoint_final.pth)
    <out>/datasets/pretrained/ only with --pretrained: the nnU-Net v1 Task008_HepaticVessel archive
    <out>/kernels/train/       kernel-metadata.json + 02_train.ipynb
    <out>/kernels/infer/       kernel-metadata.json + 03_infer.ipynb (internet off: a code competition)

Both kernels ask for the 2 x T4 machine (`machine_shape`, configs/kaggle.toml [bundle]), keep the image they first
ran on (`docker_image_pinning_type` "original") and run with internet off.

The notebooks are the project's notebooks 02 and 03 transformed with nbformat: outputs stripped, a "Kaggle setup"
code cell inserted before the first code cell, and the `parameters` cell's defaults pointed at `/kaggle/input/...`
and `/kaggle/working/...` (`KAGGLE_INPUT_DIR` and `KAGGLE_WORKING_DIR` relocate both: the tests run the bundled
notebooks away from Kaggle). The setup cell installs the project's wheel with `pip install --no-index` from the
wheels dataset; pip keeps every package the image already has at a version within the project's ranges, installs
the rest, and never replaces the image's torch (a constraint pins it to the installed version).

Wheels: pip's own resolver picks the set for each Python (`pip install --dry-run --report` with `--python-version`,
`--platform`, `--only-binary=:all:`) from the ranges in pyproject.toml, made what pip on that Python would install:
pip 23 judges Requires-Python metadata and dependency markers (`python_version < "3.11"`) for the running
interpreter only, so versions whose Requires-Python rules the target out are excluded, what the target's markers
ask for and the set lacks is added, and pip resolves again; what no requirement of the target reaches is left out.
Exactly the resolved files are downloaded (their URLs, hash-checked); torch, torchvision, triton,
nvidia-* and cuda-* are never bundled. The resolved sets are kept in the download cache
(`outputs/kaggle-wheel-cache/locks`), so a rebuild is offline until `--refresh`. Pure-Python packages published only
as sdists are built into wheels there (`pip wheel --no-deps`). After assembly each Python's set is resolved again
from the dataset alone (`--no-index`): a set that misses anything fails the build.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import tomllib
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from lib import inputs, parameters, paths
from lib.postprocess import THRESHOLD_FILE

DEFAULT_USER = "your-kaggle-username"  # a placeholder: pass --user with your Kaggle user name
COMPETITION = inputs.COMPETITION_SLUG
NOTEBOOKS_DIR = paths.PROJECT_ROOT / "notebooks"
PYPROJECT = paths.PROJECT_ROOT / "pyproject.toml"
KAGGLE_CONFIG = paths.PROJECT_ROOT / "configs" / "kaggle.toml"

# Kaggle slugs (the dataset or kernel name after "<user>/"); each title below turns into exactly this slug.
WHEELS_SLUG, MODEL_SLUG = "sennet-vessels-wheels", "sennet-vessels-model"
PRETRAINED_SLUG = "task008-hepaticvessel"  # as configs/kaggle.toml expects
TRAIN_SLUG, INFER_SLUG = "sennet-vessels-train", "sennet-vessels-infer"
WHEELS_MANIFEST = inputs.WHEELS_MANIFEST  # marks the wheels dataset under the Kaggle input
PRETRAINED_NAME = inputs.HEPATIC

# Never bundled, also as dependencies: huge, CUDA-specific, and part of the Kaggle image.
IMAGE_ONLY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
# The Kaggle runtimes the wheels are for: CPython on manylinux x86_64, glibc up to Ubuntu 22.04's 2.35. Kaggle's GPU
# image moved to 3.12 in December 2025 (3.11 before); older Pythons with --python.
PYTHONS = ("3.12", "3.11")
GLIBC_MAX = 35
PLATFORMS = ([f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MAX, 16, -1)]
             + ["manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64",
                "manylinux1_x86_64"])
# Kaggle's accelerators as kernel-metadata.json names them: NvidiaTeslaT4 is "GPU T4 x2".
MACHINE_SHAPE = "NvidiaTeslaT4"
DOCKER_PINNING = "original"  # a notebook that worked keeps the image it ran on
# 2: resolutions checked against Requires-Python (format 1 locks may hold wrong versions); 3: dependency markers
# evaluated for the target (format 2 locks may miss what a marker gives the target or hold what it does not).
LOCK_FORMAT = 3
RESOLVE_TRIES = 10  # resolutions per Python, each excluding what Requires-Python rules out and adding what markers ask


class BundleError(RuntimeError):
    """The bundle cannot be built (a file missing, a wheel set incomplete, pip failed); one line for the user."""


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def slugify(title: str) -> str:
    """The slug Kaggle derives from a title (lower case, runs of other characters -> '-')."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def working_dir() -> Path:
    """Kaggle's working folder; `KAGGLE_WORKING_DIR` relocates `/kaggle/working`."""
    return Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))


def bundle_settings(config: Path = KAGGLE_CONFIG) -> dict:
    """configs/kaggle.toml's [bundle] table (pythons, machine_shape), defaults filled in."""
    settings = {"pythons": list(PYTHONS), "machine_shape": MACHINE_SHAPE}
    if config.is_file():
        with config.open("rb") as f:
            table = tomllib.load(f).get("bundle", {})
        unknown = sorted(set(table) - set(settings))
        if unknown:
            raise BundleError(f"{config}: unknown [bundle] settings {unknown}; known: {sorted(settings)}")
        settings.update(table)
    return settings


# ----------------------------------------------------------------------------------------------------------
# The Kaggle setup cell and the parameter defaults of the bundled notebooks
# ----------------------------------------------------------------------------------------------------------

SETUP_TAG = "kaggle-setup"
SETUP_CELL = '''\
# Install this project offline from the wheels dataset (pip --no-index), found by content under /kaggle/input
# whatever the mount layout (lib/inputs.py above). pip keeps what the image has at a version the project works with,
# installs the rest, and never replaces the image's torch. KAGGLE_INPUT_DIR and KAGGLE_WORKING_DIR relocate
# /kaggle/input and /kaggle/working.
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KAGGLE_INPUT = kaggle_input()
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
KAGGLE_WORKING.mkdir(parents=True, exist_ok=True)
# Large intermediate files (nnU-Net data, probabilities) stay out of /kaggle/working and its 20 GB limit.
KAGGLE_SCRATCH = Path(os.environ.get("KAGGLE_SCRATCH_DIR", "/tmp/sennet-vessels"))


def installed_versions() -> dict:
    """{normalised name: version} of every installed distribution."""
    return {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
            for d in importlib.metadata.distributions() if d.metadata["Name"]}


PYTHON = "%%d.%%d" %% sys.version_info[:2]
print(f"python {sys.version.split()[0]} at {sys.executable}")
WHEELS = find_input("wheels")
if WHEELS is None:
    print("installing nothing (attach the '%(wheels_slug)s' dataset if the imports below fail)")
else:
    MANIFEST = json.loads((WHEELS / "%(manifest)s").read_text())
    if (sys.implementation.name != "cpython" or PYTHON not in MANIFEST["pythons"] or sys.platform != "linux"
            or platform.machine() != "x86_64"):
        raise RuntimeError(
            f"this kernel runs {platform.python_implementation()} {sys.version.split()[0]} on {sys.platform} "
            f"{platform.machine()}; the wheels in {WHEELS} are for CPython {', '.join(MANIFEST['pythons'])} on "
            f"Linux x86_64: rebuild them with `python -m tools.kaggle --python {PYTHON}` (docs/kaggle.md)")
    before = installed_versions()
    image = {n: v for n, v in before.items() if re.match(MANIFEST["image_only"], n)}
    if "torch" not in image:
        raise RuntimeError("torch is not installed: the bundle relies on the image's torch")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # The image's torch & co. are constraints: pip fails rather than replace them.
        (Path(tmp) / "image.txt").write_text("".join(f"{n}=={v}\\n" for n, v in image.items()))
        # --no-compile: byte-compiling every installed file takes 5x longer than the install; imports compile
        # what they use.
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(WHEELS),
                              "--no-compile", "--disable-pip-version-check", "--report", str(Path(tmp) / "report.json"),
                              "-c", str(Path(tmp) / "image.txt"), MANIFEST["project"]], capture_output=True, text=True)
        report = json.loads((Path(tmp) / "report.json").read_text()) if pip.returncode == 0 else {}
    if pip.returncode != 0:
        print(pip.stdout[-5000:], pip.stderr[-5000:], sep="\\n")
        raise RuntimeError(f"offline install of {MANIFEST['project']} from {WHEELS} failed (pip's output above); "
                           f"the image's torch {image['torch']} is kept, never replaced")
    importlib.invalidate_caches()
    installed = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
                 for i in report["install"]}
    kept = {n: before[n] for n in [*MANIFEST["sets"][PYTHON], *image] if n in before and n not in installed}
    print(f"installed {len(installed)} packages offline from {WHEELS} in {time.perf_counter() - start:.0f} s: "
          + (", ".join(f"{n} {v}" + (f" (was {before[n]})" if n in before else "") for n, v in sorted(installed.items()))
             or "none"))
    print(f"kept {len(kept)} packages of the image: " + ", ".join(f"{n} {v}" for n, v in sorted(kept.items())))
    conflicts = [line for line in pip.stderr.splitlines() if "requires" in line and "but you have" in line]
    if conflicts:
        print("pip warns that packages of the image ask for other versions than now installed:", *conflicts,
              sep="\\n  ")
'''


SETUP_HEADER = """\
# Kaggle setup (added by `python -m tools.kaggle`). First lib/inputs.py, verbatim: the inputs are found by what
# they contain before the project is installed.
"""
INPUTS_SOURCE = paths.PROJECT_ROOT / "lib" / "inputs.py"


def setup_cell_source(wheels_slug: str = WHEELS_SLUG) -> str:
    """The Kaggle setup cell's code (the first code cell of each bundled notebook): lib/inputs.py's source, then the
    offline install."""
    install = SETUP_CELL % {"manifest": WHEELS_MANIFEST, "wheels_slug": wheels_slug}
    return f"{SETUP_HEADER}{INPUTS_SOURCE.read_text()}\n\n{install}"



HEADER = "# Parameters (papermill overrides these)"
KAGGLE_HEADER = ("# Kaggle defaults (set by tools.kaggle): inputs under KAGGLE_INPUT, outputs under KAGGLE_WORKING\n"
                 + HEADER)
# name -> (new right-hand side, new comment); the names of the setup cell (find_input, KAGGLE_WORKING, ...) are in
# scope. Inputs are found by content (lib.inputs), under any mount layout.
COMPETITION_ROOT = 'str(find_input("competition", required=True))'
TRAIN_PARAMETERS = {
    "data_dir": (COMPETITION_ROOT, "the competition data attached to the notebook, found by content"),
    "output_dir": ('str(KAGGLE_WORKING / "train")',
                   "nnU-Net folders, the model, figures (in the notebook's output)"),
    "scratch_dir": ('str(KAGGLE_SCRATCH / "train")', "nnU-Net raw + preprocessed data, outside the 20 GB /kaggle/working"),
    "pretrained": ('find_input("pretrained")',
                   f"{PRETRAINED_NAME}.zip or its folder in an attached dataset or Model; None: train from scratch"),
}
INFER_PARAMETERS = {
    "data_dir": (COMPETITION_ROOT, "the competition data (the hidden test at scoring time), found by content"),
    "model_dir": ("None", "None: the model folder (plans.json + fold_0/checkpoint_final.pth) found in an attached "
                          "dataset, Model or notebook output (lib.inputs)"),
    "output_dir": ('str(KAGGLE_WORKING / "infer")', "probabilities, masks, figures, scores"),
    "submission_file": ('str(KAGGLE_WORKING / "submission.csv")', "what the competition scores"),
    "scratch_dir": ('str(KAGGLE_SCRATCH / "infer")', "probabilities and masks, outside the 20 GB /kaggle/working"),
}


def config_parameters(notebook: str, paths_set_here: Mapping[str, object], config: Path = KAGGLE_CONFIG
                      ) -> dict[str, tuple[str, str]]:
    """The non-path settings of `notebook` in configs/kaggle.toml (epochs, threshold, ...) as overrides, so the
    bundle and `tools.pipeline --config configs/kaggle.toml` run the same recipe."""
    from tools.pipeline import load_config

    settings = load_config(config).get("notebooks", {}).get(notebook, {})
    return {k: (literal(v), f"from {config.name}") for k, v in settings.items() if k not in paths_set_here}


def literal(value: object) -> str:
    """`value` as the parameters cell writes it: Python literals with double-quoted strings."""
    if isinstance(value, parameters.Expression):
        return value.code
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no literal for {value!r}")


def parameters_cell(notebook: str, replace: Mapping[str, tuple[str, str]] | None = None, header: str = HEADER) -> str:
    """The parameters cell of `notebook`, generated from its schema (lib.parameters); `replace` maps a name to
    (code, comment). Each notebook's own cell is this one with no replacements (tests/test_parameters.py)."""
    replace = replace or {}
    unknown = sorted(set(replace) - set(parameters.SCHEMAS[notebook].by_name))
    if unknown:
        raise KeyError(f"notebook {notebook} has no parameter {unknown[0]!r}")
    lines = [header]
    for p in parameters.SCHEMAS[notebook].parameters:
        code, comment = replace.get(p.name, (literal(p.default), p.help))
        lines.append(f"{p.name} = {code}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def override_parameters(notebook: str, overrides: Mapping[str, tuple[str, str]]) -> str:
    """`notebook`'s parameters cell generated from its schema (lib.parameters), `overrides` as (code, comment)."""
    try:
        replace = {name: (code, f"Kaggle: {comment}") for name, (code, comment) in overrides.items()}
        return parameters_cell(notebook, replace, header=KAGGLE_HEADER)
    except KeyError as e:
        raise BundleError(f"parameters cell: {e.args[0]}") from None


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
    tagged[0].source = override_parameters(Path(source).stem, overrides)
    setup = nbformat.v4.new_code_cell(setup_cell_source(wheels_slug), metadata={"tags": [SETUP_TAG]})
    if nb.nbformat_minor >= 5:
        setup["id"] = SETUP_TAG
    else:
        setup.pop("id", None)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code, setup)
    nbformat.validate(nb)
    return nb


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
                    machine_shape: str = MACHINE_SHAPE) -> dict:
    """Kaggle's kernel-metadata.json: a private notebook on the competition, on the accelerator `machine_shape`,
    internet off (the CLI's default is on), keeping the image of its first run."""
    return {"id": f"{user}/{slug}", "title": title, "code_file": code_file, "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
            "enable_internet": False, "machine_shape": machine_shape, "docker_image_pinning_type": DOCKER_PINNING,
            "dataset_sources": list(datasets), "competition_sources": [COMPETITION], "kernel_sources": [],
            "model_sources": []}



# ----------------------------------------------------------------------------------------------------------
# Wheels: the project's wheel, pip's resolution per Python, the download cache, the offline completeness check
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Wheel:
    """One resolved distribution: what pip's report names, and the file it would install."""

    name: str  # canonical
    version: str
    file: str
    url: str  # where pip found `file` (https:// or file://), without a fragment
    sha256: str = ""  # the file's hash, as the report gives it ("" when it gives none)
    requires_python: str = ""  # the distribution's Requires-Python metadata

    @property
    def download_url(self) -> str:
        """`url` with a #sha256= fragment where the hash is known, so that pip verifies the file it fetches."""
        return f"{self.url}#sha256={self.sha256}" if self.sha256 else self.url

    @classmethod
    def from_report(cls, item: Mapping) -> Wheel:
        """The Wheel of one `install` item of pip's installation report."""
        info, metadata = item["download_info"], item["metadata"]
        hashes = info.get("archive_info", {}).get("hashes", {})
        legacy = info.get("archive_info", {}).get("hash", "")  # "<algorithm>=<hex>"
        sha256 = hashes.get("sha256") or (legacy.split("=", 1)[1] if legacy.startswith("sha256=") else "")
        url = info["url"].split("#", 1)[0]
        return cls(canonical(metadata["name"]), metadata["version"], unquote(url.rsplit("/", 1)[-1]), url, sha256,
                   metadata.get("requires_python") or "")

    def admits(self, python: str) -> bool:
        """Whether Requires-Python admits CPython `python` ("3.10") as pip's download checks it: as "3.10.0",
        pre-releases included; an invalid Requires-Python is ignored, as pip ignores it."""
        try:
            spec = SpecifierSet(self.requires_python)
        except InvalidSpecifier:
            return True
        return spec.contains(full_version(python), prereleases=True)


def full_version(python: str) -> str:
    """CPython `python` ("3.10") as pip's --python-version takes it: "3.10.0"."""
    return ".".join((python.split(".") + ["0", "0"])[:3])


def target_environment(python: str) -> dict[str, str]:
    """The environment markers are evaluated in for CPython `python` ("3.10", taken as 3.10.0, as `Wheel.admits`
    takes it) on manylinux x86_64: packaging's default environment with the target's Python and platform."""
    env = dict(default_environment())
    env.update(python_version=python, python_full_version=full_version(python),
               implementation_version=full_version(python), implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", os_name="posix")
    return env


def _needed(lines: Sequence[str], extras: frozenset[str], who: str, env: Mapping[str, str]) -> list[Requirement]:
    """The requirements among `lines` (Requires-Dist lines of `who`) whose markers hold in `env`, without an extra or
    with one of `extras` (the extras asked of `who`)."""
    needed = []
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise BundleError(f"{who}: invalid requirement {line!r}: {exc}") from None
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *sorted(extras))):
            needed.append(req)
    return needed


def target_gaps(items: Sequence[Mapping], requirements: Sequence[str], python: str) -> tuple[dict[str, str], set[str]]:
    """How a resolution (`items`: the `install` items of pip's report) differs from what CPython `python` needs.

    pip 23 evaluates dependency markers (`python_version < "3.11"`, ...) for the interpreter running it, not the
    target. Here `requirements` (the roots) and each reached item's `metadata.requires_dist` are evaluated for the
    target (`target_environment`; `extra` for each extra asked of the item), walking from the roots. Returns
    ({name: requirement for pip, e.g. "tomli>=1.1"} of what the target needs that `items` lack or hold at a version
    outside the needed range, {names of the items that no requirement of the target reaches})."""
    env = target_environment(python)
    by_name = {canonical(i["metadata"]["name"]): i for i in items}
    extras: dict[str, set[str]] = {}  # name reached -> the extras asked of it
    asked: dict[str, list[Requirement]] = {}  # name reached -> the requirements reaching it
    todo: list[tuple[Sequence[str], frozenset[str], str]] = [(requirements, frozenset(), "the requirements")]
    while todo:
        for req in _needed(*todo.pop(), env):
            name, wanted = canonical(req.name), {canonical(e) for e in req.extras}
            asked.setdefault(name, []).append(req)
            if name in extras and wanted <= extras[name]:
                continue
            extras.setdefault(name, set()).update(wanted)
            if name in by_name:
                metadata = by_name[name]["metadata"]
                todo.append((metadata.get("requires_dist") or [], frozenset(extras[name]), f"{name} {metadata['version']}"))
    missing = {}
    for name, reqs in asked.items():
        spec = SpecifierSet()
        for req in reqs:
            spec &= req.specifier
        if name not in by_name or not spec.contains(by_name[name]["metadata"]["version"], prereleases=True):
            missing[name] = name + (f"[{','.join(sorted(extras[name]))}]" if extras[name] else "") + str(spec)
    return missing, set(by_name) - set(asked)


def project_dependencies(pyproject: Path = PYPROJECT) -> tuple[str, str, list[str]]:
    """(name, version, dependency ranges) of the project, from pyproject.toml's [project] table."""
    with pyproject.open("rb") as f:
        project = tomllib.load(f)["project"]
    return project["name"], project["version"], list(project["dependencies"])


def target_args(python: str) -> list[str]:
    """pip options selecting wheels for CPython `python` ("3.11") on manylinux x86_64."""
    abi = "cp" + python.replace(".", "")
    return ["--python-version", python, "--implementation", "cp", "--abi", abi,
            *[a for p in PLATFORMS for a in ("--platform", p)], "--only-binary=:all:"]


def _pip(*args: str, what: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run pip; on failure a BundleError with pip's last error line (`what` says what was being done)."""
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["(no output)"]
        raise BundleError(f"{what}: pip failed: {errors[0]}")
    return proc.stdout


def offline_pip_env() -> dict[str, str]:
    """This environment with no pip configuration (no index, no find-links of this machine)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return env


def build_project_wheel(dest: Path, root: Path = paths.PROJECT_ROOT) -> Path:
    """This project as a wheel in `dest` (`lib` alone), built from a staged copy so no build/ folder lands in the repo."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    with tempfile.TemporaryDirectory(prefix="sennet-wheel-") as tmp:
        stage = Path(tmp) / "project"
        stage.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, stage / name)
        shutil.copytree(root / "lib", stage / "lib", ignore=ignore)
        _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(Path(tmp) / "dist"), str(stage),
             what=f"building the project's wheel from {root / 'pyproject.toml'}")
        (built,) = (Path(tmp) / "dist").glob("*.whl")
        with zipfile.ZipFile(built) as zf:
            leaked = [n for n in zf.namelist() if not n.startswith(("lib/", "sennet_vessels-"))]
        if leaked:
            raise BundleError(f"{built.name}: holds {leaked[0]}, outside lib/ (stale build/ folder?)")
        shutil.move(built, dest / built.name)
    return dest / built.name


def _pip_report(requirements: Sequence[str], python: str | None, find_links: Sequence[Path], offline: bool,
                excluded: Sequence[Wheel] = ()) -> list[dict]:
    """One `pip install --dry-run --report` resolution (see `resolve`): the report's `install` items; `excluded`
    versions are ruled out by a constraints file (name!=version)."""
    with tempfile.TemporaryDirectory(prefix="sennet-resolve-") as tmp:
        report, constraints = Path(tmp) / "report.json", Path(tmp) / "excluded.txt"
        constraints.write_text("".join(f"{w.name}!={w.version}\n" for w in excluded))
        args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                "-c", str(constraints), *[a for d in find_links for a in ("--find-links", str(d))]]
        if python is not None:
            args += [*target_args(python), "--target", str(Path(tmp) / "target")]
        if offline:
            args.append("--no-index")
        where = "from the wheels only (--no-index)" if offline else "against the package index"
        target = f"CPython {python}" if python else "this interpreter"
        _pip(*args, *requirements, what=f"resolving {', '.join(requirements)} for {target} {where}",
             env=offline_pip_env() if offline else None)
        return json.loads(report.read_text())["install"]


def resolve(requirements: Sequence[str], python: str | None, find_links: Sequence[Path] = (),
            offline: bool = False, tries: int = RESOLVE_TRIES) -> list[Wheel]:
    """pip's resolution of `requirements` for CPython `python` on manylinux x86_64 (None: this interpreter, sdists
    allowed), as pip's installation report lists it, made what pip on that Python would install. `offline`:
    --no-index, only `find_links` (no pip config).

    pip 23's `install --python-version` judges two things for the interpreter running it, not the target:
    - Requires-Python metadata (only a link's data-requires-python, which find-links folders and flat indexes lack,
      protects the target): every version whose metadata rules out `python` is excluded and pip resolves again;
    - dependency markers (`target_gaps`): what the target needs and the resolution lacks is added as a top-level
      requirement and pip resolves again; what no requirement of the target reaches is left out of the result."""
    excluded: list[Wheel] = []
    needs: dict[str, str] = {}  # name -> requirement added for the target's markers
    for _ in range(tries):
        items = _resolution(requirements, python, find_links, offline, excluded, needs)
        wheels = [Wheel.from_report(i) for i in items]
        if python is None:
            return wheels
        missing, unreachable = target_gaps(items, requirements, python)
        wheels = [w for w in wheels if w.name not in unreachable]
        wrong = [w for w in wheels if not w.admits(python)]
        if wrong:
            excluded += wrong
        elif missing:
            needs.update(missing)
        else:
            return wheels
    problem = (f"picks versions whose Requires-Python rules it out: {_listed(wrong)}" if wrong else
               f"misses what CPython {python} needs: {', '.join(missing.values())}")
    raise BundleError(f"resolving {', '.join(requirements)} for CPython {python}: after {tries} tries pip still "
                      f"{problem}")


def _resolution(requirements: Sequence[str], python: str | None, find_links: Sequence[Path], offline: bool,
                excluded: Sequence[Wheel], needs: Mapping[str, str]) -> list[dict]:
    """`_pip_report` with the requirements `needs` adds; its error says what `resolve` added and excluded."""
    try:
        return _pip_report([*requirements, *needs.values()], python, find_links, offline, excluded)
    except BundleError as exc:
        reasons = []
        if needs:
            reasons.append(f"CPython {python} needs {', '.join(needs.values())}, which pip skips (it evaluates "
                           f"dependency markers for the Python running it, {sys.version_info[0]}."
                           f"{sys.version_info[1]})")
        if excluded:
            reasons.append(f"CPython {python} is ruled out by the Requires-Python of {_listed(excluded)}")
        if not reasons:
            raise
        raise BundleError(f"{'; '.join(reasons)}; {'without those versions' if excluded else 'with those'}, {exc}"
                          ) from None


def _listed(wheels: Sequence[Wheel]) -> str:
    return ", ".join(f"{w.name} {w.version} ({w.requires_python})" for w in wheels)


def build_sdists(requirements: Sequence[str], cache: Path, log=print) -> list[str]:
    """Wheels in `cache` for the packages of `requirements`' closure that PyPI has only as sdists (pip's
    resolution for this interpreter says which); each must build to a pure-Python wheel. Returns the built files."""
    built = []
    for wheel in resolve(requirements, None, [cache]):
        if wheel.file.endswith(".whl") or IMAGE_ONLY.match(wheel.name):
            continue
        log(f"  building a wheel from the sdist {wheel.file}")
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            _pip("wheel", "--no-deps", "--wheel-dir", tmp, wheel.download_url,
                 what=f"building a wheel from {wheel.file}")
            (path,) = Path(tmp).glob("*.whl")
            if not path.name.endswith("-none-any.whl"):
                raise BundleError(f"{wheel.file}: published only as an sdist and not pure Python ({path.name}): "
                                  "no wheel for the other Pythons can be built here")
            os.replace(path, cache / path.name)
            built.append(path.name)
    return built


def _lock_path(cache: Path, requirements: Sequence[str], python: str) -> Path:
    key = hashlib.sha1(json.dumps([sorted(requirements), python, PLATFORMS, LOCK_FORMAT]).encode()).hexdigest()[:12]
    return cache / "locks" / f"cp{python.replace('.', '')}-{key}.json"


def download(wheels: Sequence[Wheel], python: str, cache: Path) -> None:
    """The very files pip resolved for CPython `python` (their URLs, hash-checked where the report gave a hash) into
    `cache`: a `name==version` lookup could pick another file, e.g. one built for another Python."""
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        _pip("download", "--no-deps", "--dest", tmp, *target_args(python), *[w.download_url for w in wheels],
             what=f"downloading wheels for CPython {python}")
        for w in wheels:
            if not (Path(tmp) / w.file).is_file():
                raise BundleError(f"pip download for CPython {python} gave no {w.file}")
            os.replace(Path(tmp) / w.file, cache / w.file)


def wheel_sets(requirements: Sequence[str], pythons: Sequence[str], cache: Path, refresh: bool = False,
               log=print) -> tuple[dict[str, list[Wheel]], list[str]]:
    """{python: the wheels pip resolves `requirements` to, image-only packages included} with every wheel but the
    image-only ones in `cache`, and the files downloaded now. A resolution is kept in `cache/locks` and reused
    (offline) until `refresh`."""
    cache.mkdir(parents=True, exist_ok=True)
    sets, downloaded, sdists_built = {}, [], False
    for python in pythons:
        lock = _lock_path(cache, requirements, python)
        if lock.is_file() and not refresh:
            sets[python] = [Wheel(**w) for w in json.loads(lock.read_text())]
        else:
            start = time.perf_counter()
            try:
                sets[python] = resolve(requirements, python, [cache])
            except BundleError:
                if sdists_built:
                    raise
                # Most likely a package PyPI has only as an sdist: build those into the cache and try again.
                log(f"  CPython {python}: no resolution from wheels alone; building sdist-only packages into {cache}")
                build_sdists(requirements, cache, log)
                sdists_built = True
                sets[python] = resolve(requirements, python, [cache])
            log(f"  CPython {python}: {len(sets[python])} packages resolved in {time.perf_counter() - start:.0f} s")
        wanted = [w for w in sets[python] if not IMAGE_ONLY.match(w.name) and not (cache / w.file).is_file()]
        if wanted:
            log(f"  CPython {python}: downloading {len(wanted)} wheels into {cache} ...")
            download(wanted, python, cache)
            downloaded += [w.file for w in wanted]
        lock.parent.mkdir(exist_ok=True)
        _write_json(lock, [w.__dict__ for w in sets[python]])
    return sets, downloaded


def stand_in_wheel(folder: Path, name: str, version: str, metadata: Sequence[str] = ()) -> Path:
    """An empty wheel `name==version`: the image's torch & co. in an offline resolution (or a test's package, with
    more METADATA lines in `metadata`, e.g. "Requires-Python: >=3.11", "Requires-Dist: torch")."""
    stem = f"{re.sub(r'[-.]+', '_', name)}-{version}"
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{stem}.dist-info/METADATA", "".join(
            f"{line}\n" for line in ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *metadata]))
        zf.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: sennet\nRoot-Is-Purelib: true\n"
                                               "Tag: py3-none-any\n")
        zf.writestr(f"{stem}.dist-info/RECORD", "")
    return path


def check_complete(folder: Path, requirements: Sequence[str], python: str, image: Mapping[str, str]) -> dict[str, str]:
    """pip resolves `requirements` for CPython `python` from the wheels in `folder` alone (no index, no network),
    the image-only packages (`image`: {name: version}) standing in as empty wheels. Returns {name: version} of
    what it would install from `folder`; BundleError naming the first missing requirement otherwise."""
    with tempfile.TemporaryDirectory(prefix="sennet-image-") as tmp:
        for name, version in image.items():
            stand_in_wheel(Path(tmp), name, version)
        try:
            resolved = resolve(requirements, python, [folder, Path(tmp)], offline=True)
        except BundleError as exc:
            raise BundleError(f"{folder}: the CPython {python} set is incomplete: {exc}") from None
    return {w.name: w.version for w in resolved if w.name not in image}


def build_wheels(folder: Path, user: str, cache: Path, pythons: Sequence[str] = PYTHONS, refresh: bool = False,
                 log=print) -> dict:
    """The wheels dataset in `folder` (replaced): the project's wheel and each Python's set; returns its manifest."""
    name, version, requirements = project_dependencies()
    sets, downloaded = wheel_sets(requirements, pythons, cache, refresh, log)
    _fresh(folder)
    project = build_project_wheel(folder)
    files = sorted({w.file for ws in sets.values() for w in ws if not IMAGE_ONLY.match(w.name)})
    for file in files:
        _link_or_copy(cache / file, folder / file)
    image = {p: {w.name: w.version for w in ws if IMAGE_ONLY.match(w.name)} for p, ws in sets.items()}
    resolved = {p: check_complete(folder, [f"{name}=={version}"], p, image[p]) for p in pythons}
    manifest = {"project": f"{name}=={version}", "pythons": list(pythons), "platforms": PLATFORMS,
                "image_only": IMAGE_ONLY.pattern, "requirements": requirements,
                "sets": {p: dict(sorted(r.items())) for p, r in resolved.items()},
                "image_versions_resolved": image, "wheels": [project.name, *files],
                "bytes": sum((folder / f).stat().st_size for f in [project.name, *files]), "downloaded": downloaded,
                "install": f"pip install --no-index --find-links <this folder> {name}=={version}"}
    _write_json(folder / WHEELS_MANIFEST, manifest)
    _write_json(folder / "dataset-metadata.json", dataset_metadata(
        user, WHEELS_SLUG, "SenNet Vessels Wheels",
        f"Offline wheels (CPython {', '.join(pythons)}; manylinux x86_64) for the SenNet vessel notebooks: the "
        f"project ({name} {version}) and everything it needs beyond the Kaggle image's torch. "
        f"`pip install --no-index --find-links . {name}`."))
    return manifest


def check_model_dir(model_dir: Path) -> list[Path]:
    """The final checkpoints of a trained model folder, each checked as inference will load it
    (`lib.predictor.check_model_dir`: the one model-folder check); BundleError naming the file when one fails."""
    from lib import predictor  # torch: only when a model is bundled

    checkpoints = sorted(c for c in Path(model_dir).glob("fold_*/checkpoint_final.pth")
                         if c.parent.name.removeprefix("fold_").isdigit())
    try:
        for fold in [int(c.parent.name.removeprefix("fold_")) for c in checkpoints] or [0]:
            predictor.check_model_dir(model_dir, fold=fold)
    except predictor.ModelFolderError as e:
        raise BundleError(str(e)) from None
    return checkpoints


def build_model(folder: Path, user: str, model_dir: Path) -> None:
    """A model dataset from a trained model folder (plans.json, dataset.json, fold_*/checkpoint_final.pth, and the
    threshold notebook 02 tuned, threshold.json, which notebook 03's default threshold="model" reads)."""
    model_dir = Path(model_dir)
    checkpoints = check_model_dir(model_dir)
    _fresh(folder)
    for path in [model_dir / "plans.json", model_dir / "dataset.json", model_dir / THRESHOLD_FILE, *checkpoints]:
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
    folders: dict[str, Path] = field(default_factory=dict)  # wheels, model, pretrained, train, infer
    wheels: dict | None = None  # the wheels manifest (None with --no-wheels)
    machine_shape: str = MACHINE_SHAPE
    seconds: float = 0.0

    def report(self) -> str:
        rel = {k: _display(v) for k, v in self.folders.items()}
        lines = [f"Kaggle bundle in {_display(self.out)} ({self.seconds:.0f} s):"]
        if self.wheels is not None:
            lines.append(f"  {rel['wheels']}: dataset {self.user}/{WHEELS_SLUG}, {self.wheels['project']} and "
                         f"{len(self.wheels['wheels']) - 1} wheels for CPython {', '.join(self.wheels['pythons'])}, "
                         f"{self.wheels['bytes'] / 2**20:.0f} MiB ({len(self.wheels['downloaded'])} downloaded now)")
        else:
            lines.append(f"  {rel['wheels']}: not rebuilt (--no-wheels)")
        if "model" in rel:
            lines.append(f"  {rel['model']}: dataset {self.user}/{MODEL_SLUG}")
        if "pretrained" in rel:
            lines.append(f"  {rel['pretrained']}: dataset {self.user}/{PRETRAINED_SLUG}")
        lines += [f"  {rel['train']}: notebook {self.user}/{TRAIN_SLUG} (02_train.ipynb, {self.machine_shape})",
                  f"  {rel['infer']}: notebook {self.user}/{INFER_SLUG} (03_infer.ipynb, {self.machine_shape}, "
                  "internet off)", "",
                  "Next steps (the kaggle CLI, `pip install kaggle`, with ~/.kaggle/kaggle.json):"]
        if self.user == DEFAULT_USER:
            lines.append(f"  0. rebuild with --user <your Kaggle user name> ('{DEFAULT_USER}' is a placeholder)")
        lines.append(f"  1. kaggle datasets create -p {rel['wheels']}      (later: kaggle datasets version "
                     f"-p {rel['wheels']} -m 'update')")
        if "pretrained" in rel:
            lines.append(f"     kaggle datasets create -p {rel['pretrained']}")
        lines.append(f"  2. kaggle kernels push -p {rel['train']}      (train on Kaggle's GPU; or train elsewhere)")
        if "model" in rel:
            lines.append(f"  3. kaggle datasets create -p {rel['model']} --dir-mode zip")
        else:
            lines += [f"  3. make the trained model a dataset {self.user}/{MODEL_SLUG}: rebuild with --model-dir "
                      "<train output>/nnunet/results/<dataset>/FineTuneTrainer__nnUNetPlans__3d_fullres, then",
                      f"     kaggle datasets create -p {_display(self.out / 'datasets' / 'model')} --dir-mode zip",
                      "     (or make a dataset of the training notebook's output on Kaggle, and name that dataset in "
                      f"{rel['infer']}/kernel-metadata.json; notebook 03 finds the model folder at any depth)"]
        lines.append(f"  4. kaggle kernels push -p {rel['infer']}; then submit that notebook to the competition "
                     "(Kaggle UI: Submit, or kaggle competitions submit -k <kernel> -v <version>)")
        return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def build(out: Path | str, user: str = DEFAULT_USER, wheels: bool = True, wheel_cache: Path | str | None = None,
          model_dir: Path | str | None = None, pretrained: Path | str | None = None,
          pretrained_dataset: str | None = None, pythons: Sequence[str] | None = None,
          machine_shape: str | None = None, refresh: bool = False, log=print) -> Bundle:
    """Write the Kaggle bundle into `out` (see the module docstring); folders it owns are replaced.
    `pythons` and `machine_shape` default to configs/kaggle.toml's [bundle] table."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", user):
        raise BundleError(f"--user {user!r}: expected a Kaggle user name (letters, digits, '-', '_')")
    settings = bundle_settings()
    pythons = list(pythons or settings["pythons"])
    bad = [p for p in pythons if not re.fullmatch(r"3\.\d{1,2}", p)]
    if bad:
        raise BundleError(f"--python {bad[0]!r}: expected a CPython version such as 3.11")
    machine_shape = machine_shape or settings["machine_shape"]
    notebooks = {name: NOTEBOOKS_DIR / f"{name}.ipynb" for name in ("02_train", "03_infer")}
    missing = [p for p in notebooks.values() if not p.is_file()]
    if missing:
        raise BundleError(f"{missing[0]}: notebook not found")
    if model_dir is not None:
        check_model_dir(Path(model_dir))
    if pretrained is not None and not Path(pretrained).is_file():
        raise BundleError(f"{pretrained}: pretrained archive not found")
    start = time.perf_counter()
    out = Path(out)
    datasets, kernels = out / "datasets", out / "kernels"
    bundle = Bundle(out=out, user=user, machine_shape=machine_shape,
                    folders={"wheels": datasets / "wheels", "train": kernels / "train", "infer": kernels / "infer"})
    if wheels:
        cache = Path(wheel_cache) if wheel_cache else paths.outputs_dir() / "kaggle-wheel-cache"
        bundle.wheels = build_wheels(datasets / "wheels", user, cache, pythons, refresh, log)
    if model_dir is not None:
        build_model(datasets / "model", user, Path(model_dir))
        bundle.folders["model"] = datasets / "model"
    if pretrained is not None:
        build_pretrained(datasets / "pretrained", user, Path(pretrained))
        bundle.folders["pretrained"] = datasets / "pretrained"
        pretrained_dataset = pretrained_dataset or f"{user}/{PRETRAINED_SLUG}"
    specs = [("train", "02_train", TRAIN_SLUG, "SenNet Vessels Train", TRAIN_PARAMETERS,
              [f"{user}/{WHEELS_SLUG}"] + ([pretrained_dataset] if pretrained_dataset else [])),
             ("infer", "03_infer", INFER_SLUG, "SenNet Vessels Infer", INFER_PARAMETERS,
              [f"{user}/{WHEELS_SLUG}", f"{user}/{MODEL_SLUG}"])]
    import nbformat

    for key, name, slug, title, overrides, sources in specs:
        folder = _fresh(kernels / key)
        overrides = {**config_parameters(name, overrides), **overrides}
        nbformat.write(kaggle_notebook(notebooks[name], overrides), str(folder / f"{name}.ipynb"))
        _write_json(folder / "kernel-metadata.json",
                    kernel_metadata(user, slug, title, f"{name}.ipynb", sources, machine_shape))
    bundle.seconds = time.perf_counter() - start
    return bundle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kaggle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=paths.outputs_dir() / "kaggle", help="bundle folder")
    parser.add_argument("--user", default=DEFAULT_USER, help=f"your Kaggle user name (default: the placeholder "
                                                             f"{DEFAULT_USER!r})")
    parser.add_argument("--python", action="append", default=None, metavar="X.Y",
                        help="a CPython version to bundle wheels for (repeatable; default: configs/kaggle.toml "
                             f"[bundle] pythons, else {', '.join(PYTHONS)})")
    parser.add_argument("--machine-shape", default=None,
                        help=f"the Kaggle accelerator of both notebooks (default: configs/kaggle.toml, else "
                             f"{MACHINE_SHAPE} = GPU T4 x2; e.g. NvidiaTeslaP100)")
    parser.add_argument("--no-wheels", action="store_true", help="do not (re)build the wheels dataset")
    parser.add_argument("--refresh", action="store_true",
                        help="resolve the wheel sets again against the index (default: reuse the cached resolution)")
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
                       pretrained_dataset=args.pretrained_dataset, pythons=args.python,
                       machine_shape=args.machine_shape, refresh=args.refresh,
                       log=lambda msg: print(msg, file=sys.stderr))
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(bundle.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
