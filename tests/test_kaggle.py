"""The Kaggle bundle (tools.kaggle): layout and kernel metadata (checked by the official kaggle CLI), the bundled
notebooks, the wheel sets (pip's resolution per Python, complete without a network), and the offline path: a fresh
venv holding what the Kaggle image has (torch, torchvision, ipykernel) installs the project's wheel and the rest
from the bundle with pip --no-index and no network, and runs the bundled inference notebook against a fake
/kaggle/input.

The session builds the bundle once for this interpreter's Python; wheels and pip's resolutions are cached in
outputs/kaggle-wheel-cache (PyPI on a clean clone: about 230 MiB and a minute of resolving) and reused by later
sessions. Three Pythons are tested on a small requirement set (pydantic: one binary and four pure wheels).
Every test that needs the bundle (or the network) is marked slow: `make test-fast` runs the others.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pandas as pd
import pytest
from packaging.requirements import Requirement

from lib import inputs, paths
from tools import kaggle

WHEEL_CACHE = paths.outputs_dir() / "kaggle-wheel-cache"
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
USER = "test-user"
KERNEL_NAME = "sennet-offline"
SYNTHETIC_INTENSITY = {"mean": 20000.0, "std": 5000.0, "percentile_00_5": 5000.0, "percentile_99_5": 40000.0,
                       "median": 20000.0, "min": 0.0, "max": 65535.0}  # the synthetic scans' range
# What the Kaggle image has that this test's fresh venv gets from the project's environment.
IMAGE_ROOTS = ("torch", "torchvision", "ipykernel")
STALE_TQDM = "4.0.0"  # planted in the fresh venv: an image package below the project's range (tqdm>=4.60)
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

    from lib import postprocess

    plans = small_plans(spacing=(0.05, 0.05, 0.05), intensity=SYNTHETIC_INTENSITY)
    folder = write_model_dir(tmp_path_factory.mktemp("model") / "FineTuneTrainer__nnUNetPlans__3d_fullres", plans,
                             random_network(plans))
    curve = pd.DataFrame({"threshold": [0.4, 0.5], "surface_dice": [0.2, 0.3], "dice": [0.2, 0.3]})
    postprocess.save_threshold(folder, curve, 0.5, "kidney_3_dense")  # as notebook 02 stores it
    return folder


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> kaggle.Bundle:
    """The bundle with wheels for this Python (downloads only what the cache lacks) and the tiny model."""
    return kaggle.build(tmp_path_factory.mktemp("bundle") / "kaggle", user=USER, wheel_cache=WHEEL_CACHE,
                        model_dir=tiny_model, pythons=[HERE])


def _offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without pip's configuration (no index, no find-links of the machine) or proxies."""
    env = {k: v for k, v in kaggle.offline_pip_env().items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
           and k not in ("PYTHONPATH", "SENNET_DATA_DIR", "SENNET_OUTPUTS", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
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


def _installed_closure(roots: list[str]) -> list[str]:
    """`roots` and what they require here, recursively, extras followed (markers of this interpreter)."""
    found, seen, todo = set(), set(), [(r, "") for r in roots]
    while todo:
        name, extra = todo.pop()
        name = kaggle.canonical(name)
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        found.add(name)
        for line in importlib.metadata.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, ""), *[(req.name, kaggle.canonical(e)) for e in req.extras]]
    return sorted(found)


def _link_distribution(dist, dst_site: Path, dst_root: Path) -> int:
    """Hard-link (copy where linking fails) every file of `dist`'s RECORD into the venv at `dst_root`."""
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
    return count


def _plant_distribution(site: Path, name: str, version: str) -> None:
    """An installed-looking distribution `name==version` with no files but its metadata (pip can uninstall it)."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("".join(f"{info.name}/{f},,\n" for f in ("METADATA", "INSTALLER", "RECORD")))


def _image_venv(root: Path) -> Path:
    """A fresh venv standing in for the Kaggle image: torch, torchvision and ipykernel with everything they require
    hard-linked in from the project's environment, plus a `tqdm` too old for the project. Registered as the Jupyter
    kernel `sennet-offline` in `root/jupyter`. Nothing of the project is installed."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_offline_env(), timeout=300)
    python = venv / "bin" / "python"
    site = venv / "lib" / f"python{HERE}" / "site-packages"
    assert site.is_dir()
    names = _installed_closure(list(IMAGE_ROOTS))
    assert "tqdm" not in names and "nnunetv2" not in names
    present = json.loads(_run([str(python), "-m", "pip", "list", "--format", "json"], _offline_env()))
    clash = [d["name"] for d in present if kaggle.canonical(d["name"]) in names]  # the venv's own setuptools
    if clash:
        _run([str(python), "-m", "pip", "uninstall", "-y", *clash], _offline_env())
    linked = sum(_link_distribution(importlib.metadata.distribution(n), site, venv) for n in names)
    assert linked > 100
    _plant_distribution(site, "tqdm", STALE_TQDM)
    spec = root / "jupyter" / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "offline bundle venv", "language": "python"}))
    return venv


@pytest.fixture
def offline_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh stand-in Kaggle image for each test (see `_image_venv`)."""
    return _image_venv(tmp_path_factory.mktemp("offline"))


LAYOUTS = ("2026", "legacy")


def _fake_kaggle_input(root: Path, bundle: kaggle.Bundle, competition: Path, layout: str,
                       archive: Path | None = None) -> dict[str, Path]:
    """`root` laid out like /kaggle/input (hard-linked copies): "2026" as Kaggle mounts inputs today (the competition
    under competitions/, the wheels under datasets/<owner>/, the model and the hepatic archive as Kaggle Models),
    "legacy" every input one folder below the root. Returns where each input went."""
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst, copy_function=os.link)
        return dst

    model_version = ("models", USER, "sennet-vessels-model", "pytorch", "default", "1")
    at = {"2026": {"competition": ("competitions", kaggle.COMPETITION), "wheels": ("datasets", USER, kaggle.WHEELS_SLUG),
                   "model": model_version, "pretrained": ("models", USER, "task008", "pytorch", "default", "2")},
          "legacy": {"competition": (kaggle.COMPETITION,), "wheels": (kaggle.WHEELS_SLUG,),
                     "model": (kaggle.MODEL_SLUG,), "pretrained": (kaggle.PRETRAINED_SLUG,)}}[layout]
    placed = {"competition": copy(competition, root.joinpath(*at["competition"])),
              "wheels": copy(bundle.folders["wheels"], root.joinpath(*at["wheels"])),
              "model": copy(bundle.folders["model"], root.joinpath(*at["model"])) / "model"}
    if archive is not None:
        placed["pretrained"] = root.joinpath(*at["pretrained"], archive.name)
        placed["pretrained"].parent.mkdir(parents=True)
        os.link(archive, placed["pretrained"])
    return placed


def _run_bundled(notebook: Path, executed: Path, python: Path, kaggle_input: Path, working: Path,
                 params: dict, no_network: list[str]) -> tuple[nbformat.NotebookNode, str]:
    """A bundled notebook under papermill, its kernel the stand-in image venv, no network; (the executed notebook,
    the setup cell's output). Fails the test on any error."""
    env = _offline_env({"KAGGLE_INPUT_DIR": str(kaggle_input), "KAGGLE_WORKING_DIR": str(working),
                        "KAGGLE_SCRATCH_DIR": str(working.parent / "scratch"),
                        "JUPYTER_PATH": str(python.parent.parent.parent / "jupyter"), "MPLBACKEND": "agg"})
    proc = subprocess.run([*no_network, sys.executable, "-m", "papermill", str(notebook), str(executed),
                           "-k", KERNEL_NAME, "--cwd", str(working), "-y", json.dumps(params), "--no-progress-bar"],
                          capture_output=True, text=True, env=env, timeout=900)
    nb = nbformat.read(executed, as_version=4) if executed.is_file() else None
    errors = [o for c in (nb.cells if nb else []) if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    setup_out = _setup_cell_output(nb) if nb else ""
    assert proc.returncode == 0 and not errors, f"{proc.stderr[-3000:]}\n{setup_out[-6000:]}\n{errors}"
    assert f"at {python}" in setup_out  # the kernel ran on the stand-in image
    return nb, setup_out


def _cell_text(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook's code cells printed."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json\n"
            "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))")
    return json.loads(_run([str(python), "-c", code], _offline_env()))


def _setup_cell_output(nb) -> str:
    setup = next(c for c in nb.cells if kaggle.SETUP_TAG in c.metadata.get("tags", []))
    return "".join(o.get("text", "") for o in setup.outputs)


# ----------------------------------------------------------------------------------------------------------
# 1. Layout, kernel metadata, notebooks
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bundle_layout_and_metadata(bundle: kaggle.Bundle) -> None:
    out = bundle.out
    assert {p.name for p in (out / "datasets").iterdir()} == {"wheels", "model"}  # no lib dataset: the wheel has lib
    assert (out / "datasets" / "model" / "model" / "threshold.json").is_file()  # threshold="model" needs it
    assert {p.name for p in (out / "kernels").iterdir()} == {"train", "infer"}
    kernels = {k: json.loads((out / "kernels" / k / "kernel-metadata.json").read_text()) for k in ("train", "infer")}
    for key, meta in kernels.items():
        assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
        assert meta["is_private"] is True and meta["enable_gpu"] is True and meta["enable_internet"] is False
        assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["docker_image_pinning_type"] == "original"
        assert meta["competition_sources"] == ["blood-vessel-segmentation"] and meta["kernel_sources"] == []
        user, slug = meta["id"].split("/")
        assert user == USER and slug == kaggle.slugify(meta["title"])  # Kaggle derives the slug from the title
        assert (out / "kernels" / key / meta["code_file"]).is_file()
        assert f"{USER}/{kaggle.WHEELS_SLUG}" in meta["dataset_sources"]
    assert kernels["infer"]["code_file"] == "03_infer.ipynb" and kernels["train"]["code_file"] == "02_train.ipynb"
    assert f"{USER}/{kaggle.MODEL_SLUG}" in kernels["infer"]["dataset_sources"]
    assert not any(kaggle.PRETRAINED_SLUG in s for s in kernels["train"]["dataset_sources"])  # none given
    for key, slug in (("wheels", kaggle.WHEELS_SLUG), ("model", kaggle.MODEL_SLUG)):
        meta = json.loads((out / "datasets" / key / "dataset-metadata.json").read_text())
        assert meta["id"] == f"{USER}/{slug}" and kaggle.slugify(meta["title"]) == slug
        assert meta["licenses"] == [{"name": "other"}]
    model = out / "datasets" / "model"
    assert inputs.scan_inputs(model)["model"] == [model / "model"]


@pytest.mark.slow
def test_project_wheel_ships_lib_without_stand_ins_and_tooling(bundle: kaggle.Bundle) -> None:
    (wheel,) = bundle.folders["wheels"].glob("sennet_vessels-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("lib/")}
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        outside = [n for n in zf.namelist() if not n.startswith(("lib/", "sennet_vessels-"))]
    lib = paths.PROJECT_ROOT / "lib"
    assert shipped == {str(p.relative_to(lib.parent)) for p in lib.rglob("*.py")}
    assert outside == []  # the stand-ins and tooling (tools/) are their own distribution: nothing to strip
    assert "lib/predictor.py" in shipped and "lib/training/fine_tune.py" in shipped
    _, _, requirements = kaggle.project_dependencies()
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    assert [str(Requirement(r)) for r in requires if "extra ==" not in r] == [str(Requirement(r)) for r in requirements]


def test_kaggle_notebooks_never_import_the_stand_ins_or_tooling() -> None:
    """Notebooks 02/03 import from lib only, never from tools/ (what lib imports in turn never reaches tools/:
    tests/test_layout.py), so the wheel of lib alone runs them on Kaggle."""
    imported = []
    for name in ("02_train", "03_infer"):
        for cell in nbformat.read(paths.PROJECT_ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells:
            if cell.cell_type == "code":
                imported += re.findall(r"^\s*(?:from|import) (\w+)", cell.source, re.M)
    assert "lib" in imported and "tools" not in imported


@pytest.mark.parametrize("shape", [None, "NvidiaTeslaP100"])
def test_official_kaggle_cli_accepts_the_kernel_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, shape: str | None) -> None:
    """`kaggle kernels push` (the official CLI, kaggle on PyPI) runs its local checks on both kernel folders and
    builds its request; a stub stands in for the upload call. The default asks for the 2 x T4 machine."""
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    from kaggle.api.kaggle_api_extended import KaggleApi

    sent = []

    @contextlib.contextmanager
    def stub_client():
        save = lambda request: sent.append(request) or SimpleNamespace(error=None)  # noqa: E731
        yield SimpleNamespace(kernels=SimpleNamespace(kernels_api_client=SimpleNamespace(save_kernel=save)))

    api = KaggleApi()
    monkeypatch.setattr(api, "build_kaggle_client", stub_client)
    assert kaggle.main(["--out", str(tmp_path / "k"), "--no-wheels", "--user", USER]
                       + (["--machine-shape", shape] if shape else [])) == 0
    capsys.readouterr()
    for key in ("train", "infer"):
        api.kernels_push(str(tmp_path / "k" / "kernels" / key))
    printed = capsys.readouterr()
    assert [r.slug for r in sent] == [f"{USER}/{kaggle.TRAIN_SLUG}", f"{USER}/{kaggle.INFER_SLUG}"]
    for request in sent:
        assert request.machine_shape == (shape or "NvidiaTeslaT4") and request.enable_internet is False
        assert request.docker_image_pinning_type == "original" and request.enable_gpu is True
        assert request.competition_data_sources == ["blood-vessel-segmentation"]
        assert f"{USER}/{kaggle.WHEELS_SLUG}" in request.dataset_data_sources
        code = [c for c in json.loads(request.text)["cells"] if c["cell_type"] == "code"]
        assert code[0]["source"].startswith("# Kaggle setup")
    assert "does not resolve to the specified id" not in printed.out
    assert ("retired" in printed.err) == (shape == "NvidiaTeslaP100")  # the CLI warns, and still pushes


@pytest.mark.slow
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
    assert (paths.PROJECT_ROOT / "lib" / "inputs.py").read_text() in setup.source  # one implementation, embedded
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = tagged[0].source
    assert re.search(r'^data_dir = str\(find_input\("competition", required=True\)\)', params, re.M)
    assert "blood-vessel-segmentation" not in params  # no fixed mount path
    if name == "03_infer":
        assert re.search(r"^model_dir = None", params, re.M)
        assert re.search(r'^submission_file = str\(KAGGLE_WORKING / "submission.csv"\)', params, re.M)
        assert re.search(r"^output_dir = str\(KAGGLE_WORKING", params, re.M)
    else:
        assert re.search(r"^output_dir = str\(KAGGLE_WORKING", params, re.M)
        assert re.search(r'^pretrained = find_input\("pretrained"\)', params, re.M)
    # Every other cell is the project's, unchanged, in order (nbformat transformation only).
    others = [c.source for c in nb.cells if c is not setup and c is not tagged[0]]
    assert others == [c.source for c in original.cells if "parameters" not in c.metadata.get("tags", [])]
    # The parameters the project notebook has are all still there.
    names = lambda src: re.findall(r"^(\w+) = ", src, re.M)  # noqa: E731
    original_params = next(c for c in original.cells if "parameters" in c.metadata.get("tags", []))
    assert names(params) == names(original_params.source)


@pytest.mark.slow
def test_parameter_defaults_find_the_inputs_by_content(bundle: kaggle.Bundle, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    """The setup cell + parameters cell, evaluated with KAGGLE_INPUT_DIR/KAGGLE_WORKING_DIR relocated: without the
    competition, one line saying what the input holds; the competition and the hepatic archive found in today's
    layout and in the legacy one; outputs go to the working folder."""
    kaggle_input, working = tmp_path / "input", tmp_path / "working"
    (kaggle_input / "datasets" / "someone" / "other").mkdir(parents=True)
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

    with pytest.raises(FileNotFoundError) as info:
        defaults("infer", "03_infer")
    assert str(info.value).endswith(f"{kaggle_input} holds: datasets/{{someone/}}") and "\n" not in str(info.value)
    competition = kaggle_input / "competitions" / kaggle.COMPETITION
    (competition / "test").mkdir(parents=True)
    (competition / "sample_submission.csv").write_text("id,rle\n")
    infer = defaults("infer", "03_infer")
    assert infer["data_dir"] == str(competition) and infer["model_dir"] is None
    assert infer["submission_file"] == str(working / "submission.csv")
    assert Path(infer["output_dir"]).is_relative_to(working) and working.is_dir()
    train = defaults("train", "02_train")
    assert train["data_dir"] == str(competition) and train["pretrained"] is None
    assert Path(train["output_dir"]).is_relative_to(working)
    archive = kaggle_input / "models" / "someone" / "task008" / "pytorch" / "default" / "1" / "Task008_HepaticVessel.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")
    capsys.readouterr()
    assert defaults("train", "02_train")["pretrained"] == archive
    assert f"pretrained: {archive}" in capsys.readouterr().out
    legacy = kaggle_input / "task008-hepaticvessel" / "Task008_HepaticVessel"  # a dataset whose zip Kaggle extracted
    legacy.mkdir(parents=True)
    assert defaults("train", "02_train")["pretrained"] == legacy  # shallower: first
    assert f"pretrained: {legacy} (first of 2: also {archive})" in capsys.readouterr().out


def test_setup_cell_stops_on_an_interpreter_without_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """No wheels dataset: it says so and installs nothing. A wheels dataset for other Pythons only: one line naming
    this interpreter, the bundled versions and how to rebuild."""
    source = kaggle.setup_cell_source()
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(tmp_path / "working"))
    (tmp_path / "input").mkdir()
    exec(compile(source, "setup", "exec"), {})
    assert "no wheels dataset" in capsys.readouterr().out and (tmp_path / "working").is_dir()
    wheels = tmp_path / "input" / "wheels"
    wheels.mkdir()
    other = ["3.9", "3.13"]
    (wheels / kaggle.WHEELS_MANIFEST).write_text(json.dumps({"pythons": other, "image_only": "^torch$"}))
    with pytest.raises(RuntimeError) as info:
        exec(compile(source, "setup", "exec"), {})
    message = str(info.value)
    assert "\n" not in message
    assert f"CPython {sys.version.split()[0]}" in message and "CPython 3.9, 3.13 on Linux x86_64" in message
    assert f"--python {HERE}" in message


# ----------------------------------------------------------------------------------------------------------
# 2. Wheel sets: pip's resolution per Python, complete without a network
# ----------------------------------------------------------------------------------------------------------

def _check_offline(no_network: list[str], folder: Path, requirements: list[str], python: str,
                   image: dict[str, str]) -> subprocess.CompletedProcess:
    """kaggle.check_complete in a process without network."""
    code = ("import json, sys; from pathlib import Path; from tools import kaggle\n"
            "print(json.dumps(kaggle.check_complete(Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3],"
            " json.loads(sys.argv[4]))))")
    return subprocess.run([*no_network, sys.executable, "-c", code, str(folder), json.dumps(requirements), python,
                           json.dumps(image)], capture_output=True, text=True, timeout=300,
                          env={**_offline_env(), "PYTHONPATH": str(paths.PROJECT_ROOT)})


@pytest.mark.slow
def test_wheel_set_is_complete_without_network(bundle: kaggle.Bundle, no_network: list[str], tmp_path: Path) -> None:
    """The project's wheel and its whole closure resolve from the wheels dataset alone (torch & co. as empty stand-in
    wheels); without one dependency's wheel the check fails and names it. No wheel of torch & co. is bundled."""
    folder = bundle.folders["wheels"]
    manifest = json.loads((folder / kaggle.WHEELS_MANIFEST).read_text())
    assert manifest["pythons"] == [HERE] and manifest["project"] == "sennet-vessels==0.2.0"
    assert sorted(p.name for p in folder.glob("*.whl")) == sorted(manifest["wheels"])
    image = manifest["image_versions_resolved"][HERE]
    assert {"torch", "torchvision"} <= set(image)
    assert not [w for w in manifest["wheels"] if kaggle.IMAGE_ONLY.match(kaggle.canonical(w.split("-")[0]))]
    proc = _check_offline(no_network, folder, [manifest["project"]], HERE, image)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = json.loads(proc.stdout)
    assert resolved == manifest["sets"][HERE]
    for name in ("sennet-vessels", "nnunetv2", "dynamic-network-architectures", "connected-components-3d", "numpy",
                 "scipy", "pandas", "tifffile", "matplotlib", "tqdm", "acvl-utils", "batchgenerators", "simpleitk"):
        assert name in resolved, name
    assert not {"papermill", "pytest", "nbformat", "ipykernel", "ipywidgets"} & set(resolved)  # not for Kaggle
    pinned = dict(line.split("==") for line in (paths.PROJECT_ROOT / "requirements.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    same = [n for n in ("nnunetv2", "numpy", "scipy", "pandas") if resolved[n] == pinned[n]]
    assert same, "pip's resolution for this Python should meet the project's tested pins somewhere"
    crippled = tmp_path / "wheels"
    shutil.copytree(folder, crippled, copy_function=os.link)
    (missing,) = crippled.glob("scipy-*.whl")
    missing.unlink()
    proc = _check_offline(no_network, crippled, [manifest["project"]], HERE, image)
    assert proc.returncode != 0 and "set is incomplete" in proc.stderr and "scipy" in proc.stderr


@pytest.mark.slow
def test_three_pythons_get_their_own_binary_wheels_and_share_the_pure_ones(no_network: list[str],
                                                                           tmp_path: Path) -> None:
    """The wheel-set machinery on a small requirement set (pydantic: a binary pydantic-core and pure wheels) for
    CPython 3.10, 3.11, 3.12: pip resolves each (cached after the first run), binary wheels are per Python, pure
    ones are shared, and each set resolves offline, while a Python that was not bundled does not."""
    requirements, pythons = ["pydantic>=2.5"], ("3.10", "3.11", "3.12")
    sets, _ = kaggle.wheel_sets(requirements, pythons, WHEEL_CACHE, log=lambda msg: None)
    folder = tmp_path / "wheels"
    folder.mkdir()
    files = {w.file for ws in sets.values() for w in ws}
    for file in files:
        os.link(WHEEL_CACHE / file, folder / file)
    core = sorted(f for f in files if f.startswith("pydantic_core-"))
    assert [re.search(r"-(cp3\d+)-", f).group(1) for f in core] == ["cp310", "cp311", "cp312"]
    pure = [f for f in files if f.endswith("-none-any.whl")]
    assert len(pure) == len({f.split("-")[0] for f in pure}) >= 3  # one file per pure package for all Pythons
    for python in pythons:
        proc = _check_offline(no_network, folder, requirements, python, {})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert set(json.loads(proc.stdout)) == {w.name for w in sets[python]}
    proc = _check_offline(no_network, folder, requirements, "3.13", {})
    assert proc.returncode != 0 and "CPython 3.13 set is incomplete" in proc.stderr and "pydantic" in proc.stderr


@pytest.mark.slow
def test_cached_rebuild_resolves_and_downloads_nothing(bundle: kaggle.Bundle, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no package index: everything must come from the cache
    again = kaggle.build(tmp_path / "kaggle", user=USER, wheel_cache=WHEEL_CACHE, pythons=[HERE], log=lambda m: None)
    assert again.wheels["downloaded"] == [] and again.wheels["wheels"] == bundle.wheels["wheels"]
    assert again.wheels["sets"] == bundle.wheels["sets"]


# ----------------------------------------------------------------------------------------------------------
# 3. The command line
# ----------------------------------------------------------------------------------------------------------

def test_cli_without_wheels_prints_next_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert kaggle.main(["--out", str(tmp_path / "kaggle"), "--no-wheels"]) == 0
    printed = capsys.readouterr().out
    assert "kaggle datasets create -p" in printed and "kaggle kernels push -p" in printed
    assert "placeholder" in printed and "NvidiaTeslaT4" in printed
    meta = json.loads((tmp_path / "kaggle" / "kernels" / "infer" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{kaggle.DEFAULT_USER}/{kaggle.INFER_SLUG}"
    assert not (tmp_path / "kaggle" / "datasets").exists()
    archive = tmp_path / "Task008_HepaticVessel.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: only packaged here, never opened
    assert kaggle.main(["--out", str(tmp_path / "k2"), "--no-wheels", "--user", "someone",
                        "--pretrained", str(archive), "--machine-shape", "NvidiaTeslaP100"]) == 0
    train = json.loads((tmp_path / "k2" / "kernels" / "train" / "kernel-metadata.json").read_text())
    assert train["id"] == f"someone/{kaggle.TRAIN_SLUG}" and train["machine_shape"] == "NvidiaTeslaP100"
    assert f"someone/{kaggle.PRETRAINED_SLUG}" in train["dataset_sources"]
    assert (tmp_path / "k2" / "datasets" / "pretrained" / "Task008_HepaticVessel.zip").is_file()
    meta = json.loads((tmp_path / "k2" / "datasets" / "pretrained" / "dataset-metadata.json").read_text())
    assert meta["id"] == f"someone/{kaggle.PRETRAINED_SLUG}" and kaggle.slugify(meta["title"]) == kaggle.PRETRAINED_SLUG


def test_cli_expected_failures_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(args: list[str]) -> str:
        assert kaggle.main(["--out", str(tmp_path / "k"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error: ")
        return err[-1]

    assert "'a/b'" in fails(["--no-wheels", "--user", "a/b"])
    assert f"{tmp_path / 'nope'}: model folder not found" in fails(["--no-wheels", "--model-dir", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert f"{tmp_path / 'empty' / 'plans.json'}: missing; is {tmp_path / 'empty'} a model folder written by " \
        "training?" in fails(["--no-wheels", "--model-dir", str(tmp_path / "empty")])
    assert "pretrained archive not found" in fails(["--no-wheels", "--pretrained", str(tmp_path / "x.zip")])
    assert "'3'" in fails(["--python", "3"])
    monkeypatch.setattr(kaggle, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    assert f"{tmp_path / 'notebooks' / '02_train.ipynb'}: notebook not found" in fails(["--no-wheels"])
    monkeypatch.undo()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot reach an index: resolving into an empty cache fails
    line = fails(["--wheel-cache", str(tmp_path / "cache"), "--python", HERE])
    assert "pip failed" in line and "Could not find a version that satisfies the requirement" in line
    assert not (tmp_path / "k" / "kernels").exists()  # nothing written before the failure


# ----------------------------------------------------------------------------------------------------------
# 4. The offline path: the bundled inference notebook on the fresh venv, then the install checked in full
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inference_notebook_runs_offline_on_the_bundle(bundle: kaggle.Bundle, offline_venv: Path,
                                                       no_network: list[str], synthetic_tiny: Path,
                                                       tmp_path: Path, layout: str) -> None:
    """Notebook 03 from the bundle under papermill, its kernel a fresh stand-in image, no network, the inputs
    mounted as Kaggle mounts them today (the model as a Kaggle Model) or as it did before: the setup cell finds the
    wheels by content and installs the project's wheel and what the image lacks, replaces the too-old tqdm, keeps
    torch and the rest of the image; the competition and the model are found by content; submission.csv lands in
    the relocated working folder."""
    placed = _fake_kaggle_input(tmp_path / "input", bundle, synthetic_tiny, layout)
    working = tmp_path / "working"
    working.mkdir()
    python = offline_venv / "bin" / "python"
    before = _versions(python)
    params = {"tta": False, "val_group": None, "device": "cpu"}  # threshold: the bundle's default, "model"
    nb, setup_out = _run_bundled(bundle.folders["infer"] / "03_infer.ipynb", tmp_path / "03_infer.executed.ipynb",
                                 python, tmp_path / "input", working, params, no_network)
    after = _versions(python)
    installed = sorted(n for n in after if before.get(n) != after[n])
    assert {"sennet-vessels", "nnunetv2", "scipy", "tqdm"} <= set(installed)
    assert f"wheels: {placed['wheels']}" in setup_out
    assert re.search(rf"installed {len(installed)} packages offline from {re.escape(str(placed['wheels']))} in \d+ s: ",
                     setup_out)
    assert f"tqdm {after['tqdm']} (was {STALE_TQDM})" in setup_out  # below the project's range: replaced
    kept = re.search(r"^kept (\d+) packages of the image: (.+)$", setup_out, re.M)
    for name in ("torch", "torchvision", "numpy", "packaging"):  # in the image, within the project's ranges
        assert f"{name} {before[name]}" in kept.group(2) and after[name] == before[name]
    printed = _cell_text(nb)
    assert f"competition: {placed['competition']}" in printed and f"model: {placed['model']}" in printed
    submission = pd.read_csv(working / "submission.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(synthetic_tiny / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert submission["id"].tolist() == sample["id"].tolist()
    n_test = sum(len(list((synthetic_tiny / "test" / k / "images").glob("*.tif")))
                 for k in os.listdir(synthetic_tiny / "test"))
    assert len(submission) == n_test and submission["rle"].str.len().gt(0).all()
    scores = json.loads((working / "infer" / "scores.json").read_text())
    assert scores["models"] == [str(placed["model"])]
    assert not list((tmp_path / "input").rglob("submission.csv"))  # nothing written into the (read-only) input


def _interrupted_run(folder: Path, data: Path, archive: Path) -> Path:
    """A notebook-02 run stopped after its first epoch, as an earlier Kaggle version's output holds it: trained one
    epoch from the hepatic archive, the final checkpoint turned back into the latest one."""
    from lib.training import fine_tune

    settings = fine_tune.TrainSettings(**TINY_TRAINING, epochs=1, pretrained=str(archive))
    result = fine_tune.train(data, folder, settings, progress=False)
    fold = result.model_dir / "fold_0"
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")
    (result.model_dir / "training.json").unlink()
    return folder


TINY_TRAINING = {"configuration": "tiny", "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "device": "cpu",
                 "train_groups": ("kidney_1_dense", "kidney_3_sparse")}


@pytest.mark.slow
def test_training_notebook_runs_offline_and_resumes_an_attached_run(bundle: kaggle.Bundle, offline_venv: Path,
                                                                    no_network: list[str], synthetic_tiny: Path,
                                                                    tmp_path: Path) -> None:
    """Notebook 02 from the bundle on a fresh stand-in image, no network, today's layout: the hepatic archive is a
    Kaggle Model, and an earlier version's output (an interrupted run) is attached under notebooks/<owner>/<slug>/.
    The setup cell installs the project; the notebook finds the competition and the archive by content, copies the
    run into the working folder and resumes it at its second epoch, and finishes with a model and its threshold."""
    from lib.model import architectures
    from tools import v1_checkpoint

    archive = v1_checkpoint.write_v1_archive(tmp_path / f"{kaggle.PRETRAINED_NAME}.zip",
                                             architectures.variant_plans("tiny"), seed=3)
    placed = _fake_kaggle_input(tmp_path / "input", bundle, synthetic_tiny, "2026", archive)
    run = _interrupted_run(tmp_path / "input" / "notebooks" / USER / kaggle.TRAIN_SLUG / "train", synthetic_tiny,
                           archive)
    working = tmp_path / "working"
    working.mkdir()
    python = offline_venv / "bin" / "python"
    params = {**TINY_TRAINING, "train_groups": list(TINY_TRAINING["train_groups"]), "epochs": 2,
              "validation_tta": False}
    nb, setup_out = _run_bundled(bundle.folders["train"] / "02_train.ipynb", tmp_path / "02_train.executed.ipynb",
                                 python, tmp_path / "input", working, params, no_network)
    assert re.search(r"installed \d+ packages offline from ", setup_out) and "sennet-vessels 0.2.0" in setup_out
    printed = _cell_text(nb)
    assert f"competition: {placed['competition']}" in printed and f"pretrained: {placed['pretrained']}" in printed
    assert f"resuming from {run}: copied into {working / 'train'}" in printed
    assert "(resumed at epoch 1)" in printed
    summary = json.loads((working / "train" / "train_summary.json").read_text())
    assert summary["from_scratch"] is False and summary["epochs"] == 2 and 0 <= summary["val_surface_dice"] <= 1
    model = Path(summary["model_dir"])
    assert model.is_relative_to(working) and (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert (model / "threshold.json").is_file()
    assert not list(run.rglob("checkpoint_final.pth"))  # the attached input is left as it was


@pytest.mark.slow
def test_offline_install_into_fresh_venv(bundle: kaggle.Bundle, offline_venv: Path, no_network: list[str]) -> None:
    """The fresh venv installs the project from the bundle's wheels with no index and no network (a no-op when the
    notebook test already did), pip check finds every requirement met, every module notebooks 02/03 import comes
    from the installed wheel, and the stand-ins and tooling (tools/) are not there."""
    python = offline_venv / "bin" / "python"
    wheels = bundle.folders["wheels"]
    env = _offline_env()
    _run([*no_network, str(python), "-m", "pip", "install", "--no-index", "--no-compile", "--find-links", str(wheels),
          bundle.wheels["project"]], env)
    _run([str(python), "-m", "pip", "check"], env)
    modules = set()
    for name in ("02_train", "03_infer"):
        nb = nbformat.read(paths.PROJECT_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            for m in re.finditer(r"^from (lib(?:\.\w+)*) import (.+)$", cell.source, re.M):
                modules |= {f"{m.group(1)}.{s.strip()}" for s in m.group(2).split(",")}
    assert {"lib.inference", "lib.parameters", "lib.training.fine_tune", "lib.submission"} <= modules
    code = ("import importlib.util, json, sys, nnunetv2, numpy, torch\n"
            f"import {', '.join(sorted(modules))}\n"
            "import lib\n"
            "print(json.dumps({'lib': lib.__file__, 'nnunetv2': nnunetv2.__file__, 'numpy': numpy.__file__,\n"
            "                  'torch': torch.__file__, 'prefix': sys.prefix,\n"
            "                  'absent': [m for m in ('tools',) if importlib.util.find_spec(m) is None]}))\n")
    where = json.loads(_run([*no_network, str(python), "-c", code], env, cwd=offline_venv).strip().splitlines()[-1])
    assert Path(where["prefix"]).resolve() == offline_venv.resolve()
    for module in ("lib", "nnunetv2", "numpy", "torch"):
        assert Path(where[module]).is_relative_to(offline_venv), where
    assert where["absent"] == ["tools"]


def test_bundle_settings_come_from_the_config(tmp_path: Path) -> None:
    assert kaggle.bundle_settings() == {"pythons": ["3.12", "3.11"], "machine_shape": "NvidiaTeslaT4"}
    config = tmp_path / "kaggle.toml"
    config.write_text('[bundle]\npythons = ["3.12"]\nmachine_shape = "NvidiaTeslaP100"\n')
    assert kaggle.bundle_settings(config) == {"pythons": ["3.12"], "machine_shape": "NvidiaTeslaP100"}
    config.write_text('[bundle]\nmachine = "NvidiaTeslaP100"\n')
    with pytest.raises(kaggle.BundleError, match=r"kaggle\.toml: unknown \[bundle\] settings \['machine'\]"):
        kaggle.bundle_settings(config)


@pytest.mark.slow
def test_setup_cell_never_replaces_the_images_torch(bundle: kaggle.Bundle, no_network: list[str],
                                                    tmp_path: Path) -> None:
    """An image whose torch is below the project's range (a planted torch 2.0.0): the setup cell fails, saying the
    image's torch is kept, and torch is still 2.0.0 afterwards (pip had the constraint, and no torch wheel)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_offline_env(), timeout=300)
    python = venv / "bin" / "python"
    _plant_distribution(venv / "lib" / f"python{HERE}" / "site-packages", "torch", "2.0.0")
    kaggle_input = tmp_path / "input"
    shutil.copytree(bundle.folders["wheels"], kaggle_input / kaggle.WHEELS_SLUG, copy_function=os.link)
    cell = tmp_path / "setup.py"
    cell.write_text(kaggle.setup_cell_source())
    proc = subprocess.run([*no_network, str(python), str(cell)], capture_output=True, text=True, timeout=600,
                          env=_offline_env({"KAGGLE_INPUT_DIR": str(kaggle_input),
                                            "KAGGLE_WORKING_DIR": str(tmp_path / "working")}))
    assert proc.returncode != 0
    assert re.search(r"RuntimeError: offline install of sennet-vessels==0\.2\.0 from .* failed .*the image's torch "
                     r"2\.0\.0 is kept, never replaced", proc.stderr), proc.stderr[-3000:]
    assert "The user requested (constraint) torch==2.0.0" in proc.stdout  # pip's own account, printed by the cell
    assert _versions(python)["torch"] == "2.0.0"
