"""The Kaggle wheel sets (tools.kaggle) per target Python: pip 23 checks a distribution's Requires-Python
metadata against the running interpreter, not the target of --python-version, so a find-links folder or a flat
index (links without data-requires-python) hands a target Python versions that it cannot install. The resolution
must exclude those, and the download must fetch exactly the resolved files. pip 23 also evaluates dependency
markers (`python_version < "3.11"`) for the running interpreter: each set must get what the target's markers ask for,
and only that.

Offline tests use hand-made wheels in a find-links folder; the slow one resolves and downloads real wheels (PyPI,
through pip's configuration) into an empty cache.
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tools import kaggle

# probe's releases: the newest that admits each target Python is the expected pick.
PROBE_RELEASES = {"1.0": ">=3.8", "2.0": ">=3.11", "3.0": ">=3.11,<3.12"}
EXPECTED_PROBE = {"3.10": "1.0", "3.11": "3.0", "3.12": "2.0"}
IMAGE_TORCH = "2.5.0"


def _probe_folder(folder: Path, releases: dict[str, str] = PROBE_RELEASES) -> Path:
    """A find-links folder: probe at each release (its Requires-Python; each requires torch) and a torch stand-in."""
    folder.mkdir(parents=True, exist_ok=True)
    for version, requires_python in releases.items():
        kaggle.stand_in_wheel(folder, "probe", version, [f"Requires-Python: {requires_python}", "Requires-Dist: torch"])
    kaggle.stand_in_wheel(folder, "torch", IMAGE_TORCH)
    return folder


def _index_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """pip's configuration for the rest of the test: no package index, no config file, `folder` as find-links."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))


def _requires_python(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        found = re.search(r"^Requires-Python: (.*)$", zf.read(metadata).decode(), re.MULTILINE)
    return found.group(1).strip() if found else ""


@pytest.mark.parametrize(("requires_python", "python", "admitted"), [
    (">=3.11", "3.10", False), (">=3.11", "3.12", True), ("<3.12", "3.12", False), ("!=3.10.*", "3.10", False),
    (">=3.10.1", "3.10", False),  # pip's download compares 3.10.0
    ("", "3.10", True), ("not a specifier", "3.10", True)])  # pip ignores an invalid Requires-Python
def test_requires_python_is_compared_as_pip_download_does(requires_python: str, python: str, admitted: bool) -> None:
    wheel = kaggle.Wheel("probe", "1.0", "probe-1.0-py3-none-any.whl", "file:///x", requires_python=requires_python)
    assert wheel.admits(python) is admitted


def test_report_items_give_the_file_its_url_and_hash() -> None:
    """Both hash forms of pip's report (archive_info.hashes and the legacy archive_info.hash); the file name is the
    URL's last part unquoted (a local version's '+' is %2B in URLs)."""
    url = "https://files.example/torch-2.5.0%2Bcpu-cp312-cp312-linux_x86_64.whl"
    item = {"metadata": {"name": "Torch", "version": "2.5.0+cpu", "requires_python": ">=3.9"},
            "download_info": {"url": url, "archive_info": {"hashes": {"sha256": "ab"}, "hash": "sha256=ab"}}}
    wheel = kaggle.Wheel.from_report(item)
    assert (wheel.name, wheel.file, wheel.url) == ("torch", "torch-2.5.0+cpu-cp312-cp312-linux_x86_64.whl", url)
    assert wheel.download_url == f"{url}#sha256=ab" and wheel.requires_python == ">=3.9"
    item["download_info"] = {"url": f"{url}#sha256=cd", "archive_info": {"hash": "sha256=cd"}}
    assert kaggle.Wheel.from_report(item).download_url == f"{url}#sha256=cd"
    item["download_info"] = {"url": "file:///wheels/probe-1.0-py3-none-any.whl", "archive_info": {}}
    del item["metadata"]["requires_python"]
    wheel = kaggle.Wheel.from_report(item)
    assert wheel.download_url == "file:///wheels/probe-1.0-py3-none-any.whl" and wheel.requires_python == ""


@pytest.mark.parametrize("python", sorted(EXPECTED_PROBE))
def test_resolution_from_find_links_honours_requires_python(tmp_path: Path, python: str) -> None:
    """Find-links carry no Requires-Python: pip alone (checking this interpreter, 3.11) would hand 3.10 and 3.12
    probe 3.0; the resolution gives each target the newest probe that admits it."""
    folder = _probe_folder(tmp_path / "links")
    resolved = {w.name: w.version for w in kaggle.resolve(["probe"], python, [folder], offline=True)}
    assert resolved == {"probe": EXPECTED_PROBE[python], "torch": IMAGE_TORCH}


def test_resolution_without_an_admissible_version_names_the_package(tmp_path: Path) -> None:
    folder = _probe_folder(tmp_path / "links", {"1.0": ">=3.8", "2.0": ">=3.11"})
    with pytest.raises(kaggle.BundleError, match=r"CPython 3\.10 is ruled out by the Requires-Python of probe 2\.0 "
                                                 r"\(>=3\.11\); without those versions, resolving probe>=2"):
        kaggle.resolve(["probe>=2"], "3.10", [folder], offline=True)
    with pytest.raises(kaggle.BundleError, match=r"after 1 tries pip still picks versions whose Requires-Python "
                                                 r"rules it out: probe 2\.0 \(>=3\.11\)"):
        kaggle.resolve(["probe"], "3.10", [folder], offline=True, tries=1)


def test_wheel_sets_download_exactly_the_resolved_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From an empty cache, with pip's index a find-links folder: each Python gets its own probe, the cache holds
    exactly the resolved files (torch, image-only, never), byte for byte, and a rebuild reuses the locks."""
    links = _probe_folder(tmp_path / "links")
    _index_only(monkeypatch, links)
    cache = tmp_path / "cache"
    sets, downloaded = kaggle.wheel_sets(["probe"], ["3.12", "3.10"], cache, log=lambda msg: None)
    assert {p: {w.name: w.version for w in ws} for p, ws in sets.items()} == {
        p: {"probe": EXPECTED_PROBE[p], "torch": IMAGE_TORCH} for p in ("3.12", "3.10")}
    resolved = {w.file for ws in sets.values() for w in ws if not kaggle.IMAGE_ONLY.match(w.name)}
    assert sorted(p.name for p in cache.glob("*.whl")) == sorted(resolved) == sorted(downloaded)
    for file in resolved:
        assert (cache / file).read_bytes() == (links / file).read_bytes()
    assert all(w.admits(p) and w.sha256 for p, ws in sets.items() for w in ws)
    again, downloaded = kaggle.wheel_sets(["probe"], ["3.12", "3.10"], cache, log=lambda msg: None)
    assert again == sets and downloaded == []


def test_download_fetches_the_resolved_url_and_checks_its_hash(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Another probe 1.0 file in pip's configured index is ignored: the download is the resolved URL's file; a hash
    that does not match stops it."""
    _index_only(monkeypatch, _probe_folder(tmp_path / "index", {"1.0": ">=3.8"}))
    resolved = _probe_folder(tmp_path / "resolved", {"1.0": ">=3.9"})
    (wheel,) = [w for w in kaggle.resolve(["probe"], "3.10", [resolved], offline=True) if w.name == "probe"]
    assert wheel.url.startswith("file://")
    cache = tmp_path / "cache"
    cache.mkdir()
    kaggle.download([wheel], "3.10", cache)
    assert (cache / wheel.file).read_bytes() == (resolved / wheel.file).read_bytes()
    assert hashlib.sha256((cache / wheel.file).read_bytes()).hexdigest() == wheel.sha256
    (cache / wheel.file).unlink()
    tampered = kaggle.Wheel(wheel.name, wheel.version, wheel.file, wheel.url, "0" * 64)
    with pytest.raises(kaggle.BundleError, match=r"downloading wheels for CPython 3\.10: pip failed: .*HASHES"):
        kaggle.download([tampered], "3.10", cache)
    assert not (cache / wheel.file).exists()


@pytest.mark.slow
def test_fresh_cache_gives_each_python_the_tifffile_it_can_install(tmp_path: Path) -> None:
    """tifffile's newest releases need CPython >= 3.11; this machine's pip config adds a flat index without
    data-requires-python. From an empty cache, 3.10 and 3.12 each get a tifffile (and numpy) they can install, and
    the cache holds exactly the downloaded, resolved files."""
    cache = tmp_path / "cache"
    pythons = ["3.10", "3.12"]
    sets, downloaded = kaggle.wheel_sets(["tifffile>=2023.1"], pythons, cache, log=lambda msg: None)
    resolved = {w.file for ws in sets.values() for w in ws if not kaggle.IMAGE_ONLY.match(w.name)}
    assert sorted(p.name for p in cache.glob("*.whl")) == sorted(resolved) == sorted(downloaded)
    picked = {p: {w.name: w for w in ws} for p, ws in sets.items()}
    for python in pythons:
        tifffile = picked[python]["tifffile"]
        spec = SpecifierSet(_requires_python(cache / tifffile.file))
        assert spec.contains(f"{python}.0", prereleases=True), (python, tifffile.file, spec)
        assert f"-cp{python.replace('.', '')}-" in picked[python]["numpy"].file
    assert picked["3.10"]["tifffile"].version != picked["3.12"]["tifffile"].version



# ----------------------------------------------------------------------------------------------------------
# Dependency markers: pip 23 evaluates `python_version < "3.11"` & co. for the interpreter running it (3.11), not
# the target; each set must be what pip on the target Python would install.
# ----------------------------------------------------------------------------------------------------------

# root needs dep-old below 3.11 (which needs dep-older below 3.11: a second round), dep-new from 3.12 on, dep-eleven
# on 3.11 only (pip's own Python: the other targets drop it), and dep-any everywhere.
MARKED = {"root": ['dep-old; python_version < "3.11"', 'dep-new; python_version >= "3.12"',
                   'dep-eleven; python_version == "3.11"', "dep-any"],
          "dep-old": ['dep-older; python_version < "3.11"'], "dep-older": [], "dep-new": [], "dep-eleven": [],
          "dep-any": []}
EXPECTED_MARKED = {"3.10": {"root", "dep-any", "dep-old", "dep-older"}, "3.11": {"root", "dep-any", "dep-eleven"},
                   "3.12": {"root", "dep-any", "dep-new"}}


def _marked_folder(folder: Path, skip: tuple[str, ...] = ()) -> Path:
    """A find-links folder holding MARKED's packages (1.0 each) but those in `skip`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, requires in MARKED.items():
        if name not in skip:
            kaggle.stand_in_wheel(folder, name, "1.0", [f"Requires-Dist: {r}" for r in requires])
    return folder


def _item(name: str, version: str = "1.0", *requires_dist: str) -> dict:
    """An `install` item of pip's report, as far as `target_gaps` reads it."""
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires_dist)}}


def test_target_gaps_evaluates_markers_for_the_target() -> None:
    """The walk from the roots, with each marker evaluated for the target: python_version and python_full_version
    (X.Y.0), extras asked along the way (also under a marker), the specifiers of all requirers together; a package
    pip keeps only for its own Python is unreachable."""
    items = [_item("Root", "1.0", 'Dep_Old[Fast]>=1; python_version < "3.11"',
                   'tomli>=1.1; python_full_version < "3.11.0a7"', "dep-any", 'dep-eleven; python_version == "3.11"'),
             _item("dep-any", "2.0", 'typing-extensions>=4.6; python_version < "3.13"'),
             _item("dep-eleven"), _item("typing-extensions", "4.5")]
    missing, unreachable = kaggle.target_gaps(items, ["root", 'exceptiongroup; python_version < "3.11"'], "3.10")
    assert missing == {"dep-old": "dep-old[fast]>=1", "tomli": "tomli>=1.1", "exceptiongroup": "exceptiongroup",
                       "typing-extensions": "typing-extensions>=4.6"}
    assert unreachable == {"dep-eleven"}
    items += [_item("dep-old", "1.0", 'speedup; extra == "fast" and python_version < "3.11"', "plain; extra == 'other'")]
    missing, _ = kaggle.target_gaps(items, ["root"], "3.10")
    assert "speedup" in missing and "plain" not in missing
    assert kaggle.target_gaps(items, ["root"], "3.12") == ({"typing-extensions": "typing-extensions>=4.6"},
                                                          {"dep-eleven", "dep-old"})
    assert kaggle.target_gaps(items[:3], ["root"], "3.13") == ({}, {"dep-eleven"})


@pytest.mark.parametrize("python", sorted(EXPECTED_MARKED))
def test_dependency_markers_are_evaluated_for_the_target_python(tmp_path: Path, python: str) -> None:
    """pip (3.11) alone gives every target root, dep-any and dep-eleven; 3.10 needs dep-old and dep-older instead of
    dep-eleven, 3.12 dep-new."""
    folder = _marked_folder(tmp_path / "links")
    resolved = {w.name for w in kaggle.resolve(["root"], python, [folder], offline=True)}
    assert resolved == EXPECTED_MARKED[python]


def test_wheel_sets_download_only_what_the_target_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dep-eleven (pip's own Python only) is neither in the 3.12 set nor downloaded; dep-new is."""
    _index_only(monkeypatch, _marked_folder(tmp_path / "links"))
    sets, downloaded = kaggle.wheel_sets(["root"], ["3.12"], tmp_path / "cache", log=lambda msg: None)
    assert {w.name for w in sets["3.12"]} == EXPECTED_MARKED["3.12"]
    assert sorted(downloaded) == sorted(p.name for p in (tmp_path / "cache").glob("*.whl")) == sorted(
        w.file for w in sets["3.12"])


def test_completeness_check_judges_markers_for_the_target_python(tmp_path: Path) -> None:
    """A folder lacking dep-old is incomplete for 3.10 (pip 3.11 alone would not notice), and names it; it serves
    3.11 and 3.12."""
    folder = _marked_folder(tmp_path / "links", skip=("dep-old",))
    with pytest.raises(kaggle.BundleError, match=r"the CPython 3\.10 set is incomplete: CPython 3\.10 needs dep-old, "
                                                 r"which pip skips .*dep-old"):
        kaggle.check_complete(folder, ["root"], "3.10", {})
    assert set(kaggle.check_complete(folder, ["root"], "3.12", {})) == EXPECTED_MARKED["3.12"]
    assert set(kaggle.check_complete(folder, ["root"], "3.11", {})) == EXPECTED_MARKED["3.11"]
