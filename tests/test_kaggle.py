"""The Kaggle bundle (lib.runs.kaggle): layout and metadata, the bundled notebooks, the wheels, and the offline path:
a fresh venv holding only torch (+ torchvision, as on Kaggle) installs everything else from the bundle's wheels
with pip --no-index and no network, and runs the bundled inference notebook against a fake /kaggle/input.

The session builds the bundle once; wheels are downloaded once into outputs/kaggle-wheel-cache (PyPI on a clean
clone, about 230 MiB) and reused by later sessions.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from lib import paths
from lib.runs import kaggle

WHEEL_CACHE = paths.outputs_dir() / "kaggle-wheel-cache"
USER = "test-user"
KERNEL_NAME = "sennet-offline"
SYNTHETIC_INTENSITY = {"mean": 20000.0, "std": 5000.0, "percentile_00_5": 5000.0, "percentile_99_5": 40000.0,
                       "median": 20000.0, "min": 0.0, "max": 65535.0}  # the synthetic scans' range
# Brings the loopback interface up inside a fresh network namespace (ZMQ between papermill and the kernel needs
# it), then runs the command: there is no other network in there. SIOCGIFFLAGS/SIOCSIFFLAGS, IFF_UP.
LOOPBACK_UP = """
import fcntl, os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
os.execvp(sys.argv[1], sys.argv[1:])
"""


# ----------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random nnU-Net model folder with the synthetic data's intensity statistics (as training writes)."""
    from helpers import random_network, small_plans, write_model_dir

    plans = small_plans(spacing=(0.05, 0.05, 0.05), intensity=SYNTHETIC_INTENSITY)
    return write_model_dir(tmp_path_factory.mktemp("model") / "FineTuneTrainer__nnUNetPlans__3d_fullres", plans,
                           random_network(plans))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> kaggle.Bundle:
    """The bundle with wheels (downloads only what the cache lacks) and the tiny model as its model dataset."""
    return kaggle.build(tmp_path_factory.mktemp("bundle") / "kaggle", user=USER, wheel_cache=WHEEL_CACHE,
                        model_dir=tiny_model)


def _offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without pip's configuration (no index, no find-links of the machine) or proxies."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("PIP_") and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
           and k not in ("PYTHONPATH", "SENNET_DATA_DIR", "SENNET_OUTPUTS", "VIRTUAL_ENV")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"})
    env.update(extra or {})
    return env


def _network_namespace_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "-rn", sys.executable, "-c", LOOPBACK_UP, "true"], capture_output=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.fixture(scope="session")
def no_network() -> list[str]:
    """A command prefix running its command without network (a new network namespace, loopback only); empty
    (and a warning) where user namespaces are not available: then only pip's --no-index keeps it offline."""
    if _network_namespace_works():
        return ["unshare", "-rn", sys.executable, "-c", LOOPBACK_UP]
    warnings.warn("unshare -rn is not available here: the offline checks rely on pip --no-index alone", stacklevel=2)
    return []


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def _link_distribution(dist, dst_site: Path, dst_root: Path) -> int:
    """Hard-link (copy where linking fails) every file of `dist`'s RECORD into the venv at `dst_root`."""
    src_site = Path(dist.locate_file(""))
    count = 0
    for file in dist.files or []:
        src = Path(dist.locate_file(file))
        dst = Path(os.path.normpath(dst_site / file))
        if not src.is_file() or dst.exists() or not dst.is_relative_to(dst_root):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        count += 1
    assert src_site.is_dir()
    return count


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


@pytest.fixture(scope="session")
def offline_venv(tmp_path_factory: pytest.TempPathFactory, bundle: kaggle.Bundle, no_network: list[str]) -> Path:
    """A fresh venv with torch's installed closure (torch and what it requires, recursively) and torchvision
    hard-linked in from the project's environment, as the Kaggle image has them, plus ipykernel installed offline
    from the bundle's wheels (requirements-kernel.txt), registered as the Jupyter kernel `sennet-offline` in its
    own JUPYTER_PATH. The notebook requirements (requirements.txt) are NOT installed yet."""
    import importlib.metadata

    root = tmp_path_factory.mktemp("offline")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_offline_env(), timeout=300)
    python = venv / "bin" / "python"
    site = _site_packages(venv)
    assert site.is_dir()
    names = [*kaggle.dependency_closure(["torch"], exclude=re.compile(r"(?!)")), "torchvision"]
    present = json.loads(_run([str(python), "-m", "pip", "list", "--format", "json"], _offline_env()))
    clash = [d["name"] for d in present if kaggle.canonical(d["name"]) in names]  # the venv's own setuptools
    if clash:
        _run([str(python), "-m", "pip", "uninstall", "-y", *clash], _offline_env())
    linked = sum(_link_distribution(importlib.metadata.distribution(n), site, venv) for n in names)
    assert linked > 100
    wheels = bundle.folders["wheels"]
    _run([*no_network, str(python), "-m", "pip", "install", "--no-index", "--no-compile", "--find-links", str(wheels),
          "-r", str(wheels / "requirements-kernel.txt")], _offline_env())
    spec = root / "jupyter" / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "offline bundle venv", "language": "python"}))
    return venv


def _fake_kaggle_input(root: Path, bundle: kaggle.Bundle, competition: Path) -> Path:
    """`root` laid out like /kaggle/input: the competition data and the bundle's datasets (hard-linked copies)."""
    def copy(src: Path, dst: Path) -> None:
        shutil.copytree(src, dst, copy_function=os.link)

    copy(competition, root / kaggle.COMPETITION)
    for key, slug in (("lib", kaggle.LIB_SLUG), ("wheels", kaggle.WHEELS_SLUG), ("model", kaggle.MODEL_SLUG)):
        copy(bundle.folders[key], root / slug)
    return root


def _unmet(python: Path, requirements: Path) -> list[str]:
    code = ("import importlib.metadata as m, sys\n"
            "for line in open(sys.argv[1]).read().splitlines():\n"
            "    name, _, v = line.split('#')[0].strip().partition('==')\n"
            "    if not name: continue\n"
            "    try: have = m.version(name)\n"
            "    except m.PackageNotFoundError: have = None\n"
            "    if have != v: print(name)\n")
    return _run([str(python), "-c", code, str(requirements)], _offline_env()).split()


# ----------------------------------------------------------------------------------------------------------
# 1. Layout, metadata, notebooks, wheels
# ----------------------------------------------------------------------------------------------------------

def test_bundle_layout_and_metadata(bundle: kaggle.Bundle) -> None:
    out = bundle.out
    assert {p.name for p in (out / "datasets").iterdir()} == {"lib", "wheels", "model"}
    assert {p.name for p in (out / "kernels").iterdir()} == {"train", "infer"}
    kernels = {k: json.loads((out / "kernels" / k / "kernel-metadata.json").read_text()) for k in ("train", "infer")}
    for key, meta in kernels.items():
        assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
        assert meta["is_private"] is True and meta["enable_gpu"] is True and meta["enable_internet"] is False
        assert meta["competition_sources"] == ["blood-vessel-segmentation"] and meta["kernel_sources"] == []
        user, slug = meta["id"].split("/")
        assert user == USER and slug == kaggle.slugify(meta["title"])  # Kaggle derives the slug from the title
        assert (out / "kernels" / key / meta["code_file"]).is_file()
        assert f"{USER}/{kaggle.LIB_SLUG}" in meta["dataset_sources"]
        assert f"{USER}/{kaggle.WHEELS_SLUG}" in meta["dataset_sources"]
    assert kernels["infer"]["code_file"] == "03_infer.ipynb" and kernels["train"]["code_file"] == "02_train.ipynb"
    assert f"{USER}/{kaggle.MODEL_SLUG}" in kernels["infer"]["dataset_sources"]
    assert not any(kaggle.PRETRAINED_SLUG in s for s in kernels["train"]["dataset_sources"])  # none given
    for key, slug in (("lib", kaggle.LIB_SLUG), ("wheels", kaggle.WHEELS_SLUG), ("model", kaggle.MODEL_SLUG)):
        meta = json.loads((out / "datasets" / key / "dataset-metadata.json").read_text())
        assert meta["id"] == f"{USER}/{slug}" and kaggle.slugify(meta["title"]) == slug
        assert meta["licenses"] == [{"name": "other"}]
    lib = out / "datasets" / "lib" / "lib"
    project_modules = sorted(p.name for p in (paths.PROJECT_ROOT / "lib").glob("*.py"))
    assert sorted(p.name for p in lib.glob("*.py")) == project_modules and "kaggle.py" in project_modules
    assert not list(lib.rglob("__pycache__")) and not list(lib.rglob("*.pyc"))
    model = out / "datasets" / "model"
    from lib.training import fine_tune

    assert fine_tune.find_model_dir(model) == model / "model"


@pytest.mark.parametrize("name", ["02_train", "03_infer"])
def test_bundled_notebooks_are_kaggle_ready(bundle: kaggle.Bundle, name: str) -> None:
    key = {"02_train": "train", "03_infer": "infer"}[name]
    nb = nbformat.read(bundle.folders[key] / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    original = nbformat.read(paths.PROJECT_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    setup = code[0]
    assert kaggle.SETUP_TAG in setup.metadata.tags
    assert "--no-index" in setup.source and "KAGGLE_INPUT_DIR" in setup.source
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = tagged[0].source
    assert re.search(r'^data_dir = str\(KAGGLE_INPUT / "blood-vessel-segmentation"\)', params, re.M)
    if name == "03_infer":
        assert re.search(r"^model_dir = None", params, re.M)
        assert re.search(r'^submission_file = str\(KAGGLE_WORKING / "submission.csv"\)', params, re.M)
        assert re.search(r"^output_dir = str\(KAGGLE_WORKING", params, re.M)
    else:
        assert re.search(r"^output_dir = str\(KAGGLE_WORKING", params, re.M)
        assert re.search(r"^pretrained = next\(.*Task008_HepaticVessel\.zip", params, re.M)
    # Every other cell is the project's, unchanged, in order (nbformat transformation only).
    others = [c.source for c in nb.cells if c is not setup and c is not tagged[0]]
    assert others == [c.source for c in original.cells if "parameters" not in c.metadata.get("tags", [])]
    # The parameters the project notebook has are all still there.
    names = lambda src: re.findall(r"^(\w+) = ", src, re.M)  # noqa: E731
    original_params = next(c for c in original.cells if "parameters" in c.metadata.get("tags", []))
    assert names(params) == names(original_params.source)


def test_parameter_defaults_follow_the_relocated_kaggle_folders(bundle: kaggle.Bundle, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The setup cell + parameters cell, evaluated with KAGGLE_INPUT_DIR/KAGGLE_WORKING_DIR relocated: inputs come
    from the input folder, outputs go to the working folder, the hepatic archive is found when attached."""
    kaggle_input, working = tmp_path / "input", tmp_path / "working"
    kaggle_input.mkdir()
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(kaggle_input))
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(working))

    def defaults(key: str, name: str) -> dict:
        nb = nbformat.read(bundle.folders[key] / f"{name}.ipynb", as_version=4)
        scope: dict = {}
        for cell in nb.cells:
            tags = cell.metadata.get("tags", [])
            if kaggle.SETUP_TAG in tags or "parameters" in tags:
                exec(compile(cell.source, name, "exec"), scope)
        return scope

    infer = defaults("infer", "03_infer")
    assert infer["data_dir"] == str(kaggle_input / "blood-vessel-segmentation") and infer["model_dir"] is None
    assert infer["submission_file"] == str(working / "submission.csv")
    assert Path(infer["output_dir"]).is_relative_to(working) and working.is_dir()
    train = defaults("train", "02_train")
    assert train["data_dir"] == str(kaggle_input / "blood-vessel-segmentation") and train["pretrained"] is None
    assert Path(train["output_dir"]).is_relative_to(working)
    archive = kaggle_input / "hepatic" / "Task008_HepaticVessel.zip"
    archive.parent.mkdir()
    archive.write_bytes(b"")
    assert defaults("train", "02_train")["pretrained"] == str(archive)
    archive.unlink()  # a dataset whose archive Kaggle extracted: the folder is taken
    (archive.parent / "Task008_HepaticVessel").mkdir()
    assert defaults("train", "02_train")["pretrained"] == str(archive.parent / "Task008_HepaticVessel")


def test_wheels_cover_the_closure_for_the_kaggle_runtime(bundle: kaggle.Bundle) -> None:
    from packaging.utils import parse_wheel_filename

    folder = bundle.folders["wheels"]
    wheels = sorted(folder.glob("*.whl"))
    manifest = json.loads((folder / kaggle.WHEELS_MANIFEST).read_text())
    assert sorted(w.name for w in wheels) == manifest["wheels"]
    accepted = kaggle.target_tags()
    by_name = {}
    for wheel in wheels:
        name, version, _, tags = parse_wheel_filename(wheel.name)
        assert tags & accepted, f"{wheel.name} does not install on CPython 3.11 manylinux x86_64"
        assert not kaggle.EXCLUDED.match(name), f"{wheel.name} must not be bundled"
        by_name[kaggle.canonical(name)] = str(version)
    locks = {}
    for file in ("requirements.txt", "requirements-kernel.txt"):
        for line in (folder / file).read_text().splitlines():
            if line and not line.startswith("#"):
                n, v = line.split("==")
                assert by_name.get(n) == v, f"{file}: {line} has no wheel"
                locks[n] = v
    assert set(locks) == set(by_name)  # no wheel that nothing asks for
    pins = kaggle.requirement_pins()
    notebook = (folder / "requirements.txt").read_text()
    for name in ("nnunetv2", "dynamic-network-architectures", "connected-components-3d", "tifffile", "numpy",
                 "scipy", "pandas", "matplotlib", "tqdm", "acvl-utils", "batchgenerators", "batchgeneratorsv2",
                 "simpleitk", "scikit-image"):
        assert re.search(rf"^{name}==", notebook, re.M), name
    for name, version in pins.items():  # the project's pins, where it pins
        if name in locks:
            assert locks[name] == version
    for name in ("papermill", "pytest", "nbformat", "ipykernel"):
        assert not re.search(rf"^{name}==", notebook, re.M), f"{name} is not for Kaggle"
    assert re.search(r"^ipykernel==", (folder / "requirements-kernel.txt").read_text(), re.M)


def test_cached_rebuild_downloads_nothing(bundle: kaggle.Bundle, tmp_path: Path) -> None:
    start = time.perf_counter()
    again = kaggle.build(tmp_path / "kaggle", user=USER, wheel_cache=WHEEL_CACHE)
    assert again.wheels["downloaded"] == [] and again.wheels["wheels"] == bundle.wheels["wheels"]
    assert time.perf_counter() - start < 60


def test_cli_without_wheels_prints_next_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert kaggle.main(["--out", str(tmp_path / "kaggle"), "--no-wheels"]) == 0
    printed = capsys.readouterr().out
    assert "kaggle datasets create -p" in printed and "kaggle kernels push -p" in printed
    assert "placeholder" in printed
    meta = json.loads((tmp_path / "kaggle" / "kernels" / "infer" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{kaggle.DEFAULT_USER}/{kaggle.INFER_SLUG}"
    assert not (tmp_path / "kaggle" / "datasets" / "wheels").exists()
    archive = tmp_path / "Task008_HepaticVessel.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: only packaged here, never opened
    assert kaggle.main(["--out", str(tmp_path / "k2"), "--no-wheels", "--user", "someone",
                        "--pretrained", str(archive)]) == 0
    train = json.loads((tmp_path / "k2" / "kernels" / "train" / "kernel-metadata.json").read_text())
    assert train["id"] == f"someone/{kaggle.TRAIN_SLUG}"
    assert f"someone/{kaggle.PRETRAINED_SLUG}" in train["dataset_sources"]
    assert (tmp_path / "k2" / "datasets" / "pretrained" / "Task008_HepaticVessel.zip").is_file()
    meta = json.loads((tmp_path / "k2" / "datasets" / "pretrained" / "dataset-metadata.json").read_text())
    assert meta["id"] == f"someone/{kaggle.PRETRAINED_SLUG}" and kaggle.slugify(meta["title"]) == kaggle.PRETRAINED_SLUG
    assert kaggle.main(["--out", str(tmp_path / "k3"), "--no-wheels", "--user", "a/b"]) == 1


def test_setup_cell_skips_installed_and_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import numpy

    source = kaggle.setup_cell_source()
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(tmp_path / "working"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    (tmp_path / "input").mkdir()
    exec(compile(source, "setup", "exec"), {})
    assert "no wheels dataset" in capsys.readouterr().out and (tmp_path / "working").is_dir()
    wheels = tmp_path / "input" / "wheels"
    wheels.mkdir()
    (wheels / kaggle.WHEELS_MANIFEST).write_text("{}")
    (wheels / "requirements.txt").write_text(f"# comment\nnumpy=={numpy.__version__}\n")
    exec(compile(source, "setup", "exec"), {})
    assert "nothing to install" in capsys.readouterr().out
    (wheels / "requirements.txt").write_text("sennet-no-such-package==1.0\n")
    with pytest.raises(RuntimeError, match="offline install from .* failed"):
        exec(compile(source, "setup", "exec"), {})


# ----------------------------------------------------------------------------------------------------------
# 2-3. The offline path: the bundled inference notebook on the fresh venv, then the install checked in full
# ----------------------------------------------------------------------------------------------------------

def test_inference_notebook_runs_offline_on_the_bundle(bundle: kaggle.Bundle, offline_venv: Path,
                                                       no_network: list[str], synthetic_tiny: Path,
                                                       tmp_path: Path) -> None:
    """Notebook 03 from the bundle under papermill, its kernel the fresh venv, no network: the setup cell installs
    the notebook requirements from the wheels dataset, lib comes from the lib dataset, the model from the model
    dataset (found by the notebook), and submission.csv lands in the relocated working folder."""
    kaggle_input = _fake_kaggle_input(tmp_path / "input", bundle, synthetic_tiny)
    working = tmp_path / "working"
    working.mkdir()
    python = offline_venv / "bin" / "python"
    wheels = kaggle_input / kaggle.WHEELS_SLUG
    unmet_before = _unmet(python, wheels / "requirements.txt")
    executed = tmp_path / "03_infer.executed.ipynb"
    env = _offline_env({"KAGGLE_INPUT_DIR": str(kaggle_input), "KAGGLE_WORKING_DIR": str(working),
                        "JUPYTER_PATH": str(offline_venv.parent / "jupyter"), "MPLBACKEND": "agg"})
    params = {"tta": False, "threshold": 0.5, "val_group": None, "device": "cpu"}
    notebook = bundle.folders["infer"] / "03_infer.ipynb"
    proc = subprocess.run([*no_network, sys.executable, "-m", "papermill", str(notebook), str(executed),
                           "-k", KERNEL_NAME, "--cwd", str(working), "-y", json.dumps(params), "--no-progress-bar"],
                          capture_output=True, text=True, env=env, timeout=600)
    nb = nbformat.read(executed, as_version=4) if executed.is_file() else None
    errors = [o for c in (nb.cells if nb else []) if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert proc.returncode == 0 and not errors, f"{proc.stderr[-6000:]}\n{errors}"
    setup = next(c for c in nb.cells if kaggle.SETUP_TAG in c.metadata.get("tags", []))
    setup_out = "".join(o.get("text", "") for o in setup.outputs)
    assert f"at {python}" in setup_out  # the kernel ran on the fresh venv
    if unmet_before:
        assert f"installing {len(unmet_before)} packages offline from {wheels}" in setup_out
    else:
        assert "nothing to install" in setup_out
    assert not _unmet(python, wheels / "requirements.txt")
    submission = pd.read_csv(working / "submission.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(synthetic_tiny / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert submission["id"].tolist() == sample["id"].tolist()
    n_test = sum(len(list((synthetic_tiny / "test" / k / "images").glob("*.tif")))
                 for k in os.listdir(synthetic_tiny / "test"))
    assert len(submission) == n_test and submission["rle"].str.len().gt(0).all()
    assert (working / "infer" / "scores.json").is_file()
    assert not list(kaggle_input.rglob("submission.csv"))  # nothing written into the (read-only) input


def test_offline_install_into_fresh_venv(bundle: kaggle.Bundle, offline_venv: Path, no_network: list[str]) -> None:
    """The fresh venv (torch linked in, nothing else of the project's environment) installs the notebook
    requirements from the bundle's wheels with no index and no network (a no-op when the notebook test already
    did), pip check finds every requirement met, and the bundle's lib (every module notebooks 02/03 import)
    and nnunetv2 import from it."""
    python = offline_venv / "bin" / "python"
    wheels = bundle.folders["wheels"]
    env = _offline_env()
    _run([*no_network, str(python), "-m", "pip", "install", "--no-index", "--no-compile", "--find-links", str(wheels),
          "-r", str(wheels / "requirements.txt")], env)
    assert not _unmet(python, wheels / "requirements.txt")
    _run([str(python), "-m", "pip", "check"], env)
    modules = set()
    for name in ("02_train", "03_infer"):
        nb = nbformat.read(paths.PROJECT_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            for m in re.finditer(r"^from lib import (.+)$", cell.source, re.M):
                modules |= {s.strip() for s in m.group(1).split(",")}
    assert {"inference", "training", "submission"} <= modules
    lib_dataset = bundle.folders["lib"]
    code = ("import json, sys, nnunetv2, numpy, torch\n"
            f"import {', '.join(f'lib.{m}' for m in sorted(modules))}\n"
            "import lib\n"
            "print(json.dumps({'lib': lib.__file__, 'nnunetv2': nnunetv2.__file__, 'numpy': numpy.__file__,\n"
            "                  'torch': torch.__file__, 'prefix': sys.prefix}))\n")
    where = json.loads(_run([*no_network, str(python), "-c", code], env, cwd=lib_dataset).strip().splitlines()[-1])
    assert Path(where["lib"]).is_relative_to(lib_dataset)
    assert Path(where["prefix"]).resolve() == offline_venv.resolve()
    for module in ("nnunetv2", "numpy", "torch"):
        assert Path(where[module]).is_relative_to(offline_venv), where
