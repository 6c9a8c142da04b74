"""Benchmark the streaming sliding-window predictor (lib/predictor.py) against nnU-Net's own nnUNetPredictor.

1. Comparison: the same kidney-like SYNTHETIC volume (tools.synthetic rendering, no zero voxels, spacing equal
   to the plans' so nothing is resampled) and the same RANDOM-weight network through both predictors, each in a
   FRESH subprocess on the same device with the same torch threads: wall time, the throughput ratio
   (nnUNetPredictor time / our time), peak resident memory and the max/mean |difference| of the vessel
   probabilities. Ours runs as the product does: `predict_group` into a `.npy` memmap (float32 here, so the
   difference shows the algorithm, not float16 storage); nnUNetPredictor runs `predict_single_npy_array`
   returning probabilities (its preprocessing, crop and softmax included).
2. Depth: `predict_group` (float16 memmap, as the product writes it) on a `full`-preset synthetic kidney
   (default kidney_6, 501 x 1028 x 1257, generated once into outputs/benchmarks/ and reused) at two depths
   (the first N slices at full H x W, default 128 and 501), each in a fresh subprocess, next to the bound
   of docs/design.md (peak ~ 8 * patch_z * H * W bytes + the network); plus nnUNetPredictor with
   the same network on the smallest depth (the volume in memory). On the CPU the network is a STUB by default
   (a 1x1x1 convolution with the tiny plans' 32x64x64 patch): the predictor's own buffers, tiling and I/O are
   measured in about a minute, where the tiny network would need hours for 501 full-size slices on 2 cores.

Memory: peak resident memory is /proc/self/status VmHWM of the worker subprocess (ru_maxrss is inherited
across exec, VmHWM is not). VmHWM is reset (`echo 5 > /proc/self/clear_refs`) just before prediction, so
"peak extra" = VmHWM after - VmRSS just before; "absolute" is the worker's whole-life VmHWM. Resident memory
also counts file pages mapped by the output memmap (RssFile; clean/dirty page cache that the kernel can write
back and drop), so the anonymous part (RssAnon, sampled every 5 ms) is reported separately: that is what has
to fit in RAM. On cuda, torch.cuda.max_memory_allocated is reported too (reset just before prediction).

Weights are RANDOM: speed and memory do not depend on the weights, only on the architecture and the sizes.

Run: `.venv/bin/python benchmarks/inference.py` (CPU default: a few minutes plus a one-off generation of the
full-size kidney, ~3 min), `--quick` (smoke check), `--device cuda --configuration hepatic` on a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

OUT_DIR = ROOT / "outputs" / "benchmarks"
CONFIG_VARIANTS = {"tiny": "small", "hepatic": "task008"}  # --configuration -> tools.v1_checkpoint variant
# "stub": the tiny configuration's plans (patch 32x64x64) with a 1x1x1 convolution as the network, so that the
# predictor's own buffers, tiling and I/O are measured on a full-size kidney in minutes on a CPU.
FULL_CONFIGS = [*CONFIG_VARIANTS, "stub"]
SEED = 0
MIB = 2**20


# ----------------------------------------------------------------------------------------------- memory probes


class TimedNetwork:
    """A network whose calls add up their wall time (synchronised on CUDA): the predictor's time over this is its
    overhead measured in the same run, free of run-to-run noise."""

    def __init__(self, network, device):
        import torch

        self.network, self.seconds = network, 0.0
        self.synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def __call__(self, x):
        start = time.perf_counter()
        out = self.network(x)
        self.synchronize()
        self.seconds += time.perf_counter() - start
        return out


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def system_busy_seconds() -> float:
    """CPU seconds all processes of the machine have spent busy since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker processes of several devices)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class AnonSampler(threading.Thread):
    """Samples RssAnon/RssFile every `interval` s; VmHWM has no anonymous-only counterpart."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.stop_flag = interval, threading.Event()
        self.peak_anon = self.peak_file = 0

    def run(self) -> None:
        while not self.stop_flag.is_set():
            s = proc_status()
            self.peak_anon, self.peak_file = max(self.peak_anon, s["RssAnon"]), max(self.peak_file, s["RssFile"])
            self.stop_flag.wait(self.interval)

    def stop(self) -> None:
        self.stop_flag.set()
        self.join()
        s = proc_status()
        self.peak_anon, self.peak_file = max(self.peak_anon, s["RssAnon"]), max(self.peak_file, s["RssFile"])


# ------------------------------------------------------------------------------------------- model and data


def make_plans(configuration: str, spacing_mm: float, intensity: dict) -> dict:
    """v2 plans of the chosen architecture with an isotropic `spacing_mm` and the given CT statistics."""
    from lib.model import architectures

    variant = CONFIG_VARIANTS["tiny" if configuration == "stub" else configuration]
    plans = architectures.v2_plans(variant)
    plans["configurations"]["3d_fullres"]["spacing"] = [spacing_mm] * 3
    plans["foreground_intensity_properties_per_channel"] = {"0": dict(intensity)}
    return plans


def random_network(plans: dict, seed: int = SEED, scale: float = 0.05):
    """The plans' network with seeded random weights (tools.v1_checkpoint.random_network)."""
    from tools import v1_checkpoint

    return v1_checkpoint.random_network(plans, seed, scale)


def intensity_stats(sample: np.ndarray) -> dict:
    """CT normalisation statistics (as nnU-Net's fingerprint stores them) of a sample of voxels."""
    f = sample.astype(np.float64).ravel()
    p005, p995 = np.percentile(f, [0.5, 99.5])
    return {"mean": float(f.mean()), "std": float(f.std()), "percentile_00_5": float(p005),
            "percentile_99_5": float(p995), "median": float(np.median(f)), "min": float(f.min()), "max": float(f.max())}


def comparison_input(shape: tuple[int, int, int]) -> tuple[Path, dict]:
    """The cached comparison volume of `shape` and CT statistics from every ~16th of its slices."""
    vol_file = comparison_volume(shape, OUT_DIR / "cache")
    vol = np.load(vol_file, mmap_mode="r")
    assert int(vol.min()) > 0, "nnUNetPredictor crops to the nonzero region: the volume must have no zeros"
    return vol_file, intensity_stats(vol[:: max(1, shape[0] // 16)])


def comparison_volume(shape: tuple[int, int, int], cache: Path) -> Path:
    """A kidney-like SYNTHETIC uint16 volume of `shape` (tools.synthetic's kidney_6 look), cached as .npy."""
    from tools import synthetic

    path = cache / f"volume_{'x'.join(map(str, shape))}_seed{SEED}.npy"
    if path.is_file():
        return path
    preset = dataclasses.replace(synthetic.PRESETS["small"], name="bench",
                                 shapes={**synthetic.PRESETS["small"].shapes, "kidney_6": tuple(shape)})
    cache.mkdir(parents=True, exist_ok=True)
    vol = np.lib.format.open_memmap(path.with_suffix(".partial.npy"), mode="w+", dtype=np.uint16, shape=shape)
    for z, s in enumerate(synthetic.render_slices(preset, SEED, "kidney_6")):
        vol[z] = s.image
    vol.flush()
    del vol
    path.with_suffix(".partial.npy").rename(path)
    return path


@dataclasses.dataclass(frozen=True)
class ArrayGroup:
    """A `lib.data.Group` look-alike over an in-memory (Z, H, W) volume: what `predict_group` reads."""

    name: str
    volume: np.ndarray
    voxel_um: float | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)

    def read_images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.volume[start:stop]


def full_size_root(group: str, preset: str, slices: int, workers: int) -> Path:
    """A cached synthetic competition root holding (at least the first `slices` slices of) `group` at `preset`.

    Reuses a root that `tools.synthetic.generate` wrote (complete group) or one rendered earlier. When missing:
    with `workers` > 1, renders only the first `slices` image slices with `tools.synthetic.render_slices` in that
    many processes (the same pixels `generate` writes; images only, no labels/CSVs); else calls `generate`.
    """
    from tools import synthetic

    root = OUT_DIR / f"synthetic-{preset}-{group}"
    if (root / "synthetic.json").is_file():
        print(f"  reusing {root} (tools.synthetic.generate)")
        return root
    shape = synthetic.PRESETS[preset].shapes[group]
    slices = min(slices, shape[0])
    partial = OUT_DIR / f"synthetic-{preset}-{group}-first{slices}"
    if (partial / "rendered.json").is_file():
        print(f"  reusing {partial} (first {slices} slices, rendered)")
        return partial
    start = time.perf_counter()
    if workers > 1:
        import concurrent.futures
        import multiprocessing
        import shutil

        print(f"  rendering the first {slices} of {shape[0]} slices of SYNTHETIC {group} (preset {preset!r}, "
              f"{shape[1]}x{shape[2]}) with tools.synthetic.render_slices in {workers} processes into {partial} ...",
              flush=True)
        shutil.rmtree(partial, ignore_errors=True)
        images = partial / "test" / group / "images"
        images.mkdir(parents=True)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(_render_some, preset, group, list(range(k, slices, workers)), str(images))
                    for k in range(workers)]
            for job in jobs:
                job.result()
        (partial / "rendered.json").write_text(json.dumps({"synthetic": True, "preset": preset, "seed": SEED,
                                                           "group": group, "slices": slices}) + "\n")
        print(f"  rendered in {time.perf_counter() - start:.0f} s", flush=True)
        return partial
    print(f"  generating SYNTHETIC {group} at preset {preset!r} {'x'.join(map(str, shape))} into {root} with "
          f"tools.synthetic.generate (one-off; ~0.25 s per full-size slice on one core) ...", flush=True)
    synthetic.generate(root, preset, SEED, groups=[group], force=True, progress=sys.stderr.isatty())
    print(f"  generated in {time.perf_counter() - start:.0f} s", flush=True)
    return root


def _render_some(preset: str, group: str, numbers: list[int], folder: str) -> None:
    """Render slices `numbers` of `group` and write them as generate does (NNNN.tif)."""
    from tools import synthetic

    for s in synthetic.render_slices(preset, SEED, group, slices=numbers):
        synthetic._write_tif(Path(folder) / f"{s.index:04d}.tif", s.image)


# ------------------------------------------------------------------------------------------------- worker


def worker(spec: dict) -> dict:
    """One measured prediction in this (fresh) process; returns the measurements."""
    os.environ["nnUNet_def_n_proc"] = str(spec["threads"])  # nnUNetPredictor caps torch threads at this
    import torch

    from lib import data, predictor

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # nnUNetPredictor sets this in its constructor; same for ours
    plans = make_plans(spec["configuration"], spec["spacing_mm"], spec["intensity"])
    if spec["configuration"] == "stub":
        torch.manual_seed(SEED)
        network = torch.nn.Conv3d(1, 2, 1)
    else:
        network = random_network(plans)
    model = predictor.from_network(network, plans, device)
    timed = TimedNetwork(model.network, device) if spec.get("forward_only") else None
    if timed:  # time the network's calls inside the run too (same tiles, same moment)
        model = dataclasses.replace(model, network=timed)
    n_params = sum(p.numel() for p in network.parameters())

    if "volume" in spec:
        volume = np.load(spec["volume"])  # fully in memory before the baseline, as both methods need it
        group = ArrayGroup("bench", volume, spec["spacing_mm"] * 1000)
    else:
        full = data.open_group(spec["group"], spec["root"])
        n = spec["depth"]
        group = dataclasses.replace(full, slices=full.slices[:n], image_files=full.image_files[:n],
                                    label_files=None, label_rles=None)
        if spec["method"] == "nnunet":  # nnUNetPredictor needs the whole volume in memory (before the baseline)
            volume = group.read_images()
    shape = group.shape

    # Warm-up outside the measurement: one forward pass of a patch (kernel selection, lazy CUDA init) and the
    # one-off import of nnU-Net's tiling module (~0.3 s), fixed costs that a whole kidney does not notice.
    with torch.inference_mode():
        predictor.network_logits(model)(torch.zeros((1, 1, *model.patch_size), device=device))
    predictor.Grid.of(model.patch_size, model.patch_size, 0.5)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cuda_before = torch.cuda.memory_allocated() if device.type == "cuda" else 0

    if timed:
        timed.seconds = 0.0  # not the warm-up
    busy_before, own_before = system_busy_seconds(), own_cpu_seconds()
    before = proc_status()
    hwm_setup = before["VmHWM"]
    reset = reset_peak_rss()
    sampler = AnonSampler()
    sampler.start()
    start = time.perf_counter()
    if spec["method"] == "ours":
        run = predictor.Predictor(model, 0.5, spec["tta"], True, spec["batch_size"], spec.get("devices"),
                                  progress=spec["progress"])
        run.predict_group(group, spec["out"], dtype=spec["dtype"], overwrite=True)
        probs = None
    else:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        if spec.get("fp32_buffers"):  # as tests/test_predictor.py: float32 accumulators instead of float16
            torch.half = torch.float32

        manager = PlansManager(plans)
        nnunet = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=spec["tta"],
                                 perform_everything_on_device=device.type == "cuda", device=device,
                                 allow_tqdm=spec["progress"])
        nnunet.manual_initialization(network, manager, manager.get_configuration("3d_fullres"),
                                     [network.state_dict()],
                                     {"channel_names": {"0": "CT"}, "labels": {"background": 0, "vessel": 1},
                                      "file_ending": ".tif"}, "bench", model.mirror_axes)
        _, probs = nnunet.predict_single_npy_array(volume[None], {"spacing": [spec["spacing_mm"]] * 3},
                                                   None, None, True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    in_run = timed.seconds if timed else None
    sampler.stop()
    after = proc_status()
    own = own_cpu_seconds() - own_before
    others = max(0.0, system_busy_seconds() - busy_before - own)
    result = {
        "own_cpu_cores": own / seconds,  # CPU seconds of this process per wall second
        "other_processes_cpu_cores": others / seconds,  # the rest of the machine: > ~0.2 means contention
        "method": spec["method"], "shape": list(shape), "seconds": seconds,
        "rss_before_MiB": before["VmRSS"] / MIB,
        "peak_extra_MiB": (after["VmHWM"] - before["VmRSS"]) / MIB if reset else None,
        "peak_absolute_MiB": max(hwm_setup, after["VmHWM"]) / MIB,
        "peak_anon_extra_MiB": (sampler.peak_anon - before["RssAnon"]) / MIB,
        "peak_file_extra_MiB": (sampler.peak_file - before["RssFile"]) / MIB,
        "hwm_reset": reset,
        "network_parameters": n_params,
        "network_MiB": n_params * 4 / MIB,
        "patch_size": list(model.patch_size),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_MiB"] = torch.cuda.max_memory_allocated() / MIB
        result["cuda_extra_MiB"] = (torch.cuda.max_memory_allocated() - cuda_before) / MIB
        result["cuda_device"] = torch.cuda.get_device_name()
    if probs is not None:
        np.save(spec["out"], probs[1].astype(np.dtype(spec["dtype"])))  # outside the measurement
    if spec.get("forward_only"):  # the network's own time on the same tiles: the limit of any sliding window
        from lib import inference_budget

        work = predictor.model_space_shape(shape, group.voxel_um, model, True)
        n_tiles = sum(inference_budget.tiles([work[a] for a in view], model.patch_size)
                      for view in predictor.tta_views(spec["tta"]))
        x = torch.randn((1, 1, *model.patch_size), device=device)
        start = time.perf_counter()
        network = predictor.Predictor(model, tta=spec["tta"]).tile_logits()
        for _ in range(n_tiles):
            network(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["forward_seconds"], result["tiles"] = time.perf_counter() - start, n_tiles
        result["overhead_ratio"] = seconds / result["forward_seconds"]
        result["network_in_run_seconds"] = in_run
        result["in_run_ratio"] = seconds / in_run
    return result


def wait_idle(limit_s: float, threshold: float = 0.25, window_s: float = 3.0) -> float:
    """Wait (up to `limit_s`) until the machine's other processes use under `threshold` cores over `window_s`;
    returns the cores they used in the last window."""
    deadline, told = time.monotonic() + limit_s, False
    while True:
        busy, own = system_busy_seconds(), own_cpu_seconds()
        time.sleep(window_s)
        load = (system_busy_seconds() - busy - (own_cpu_seconds() - own)) / window_s
        if load < threshold or time.monotonic() >= deadline:
            return load
        if not told:
            print(f"    (other processes keep {load:.1f} CPU cores busy: waiting up to {limit_s:.0f} s for idle)",
                  flush=True)
            told = True


def run_worker(spec: dict, wait_s: float = 0.0) -> dict:
    """Run `worker(spec)` in a fresh interpreter and return its result; with `wait_s`, start on an idle
    machine if possible and rerun once when other processes competed for the CPUs."""
    for attempt in range(2 if wait_s else 1):
        if wait_s:
            wait_idle(wait_s)
        with tempfile.TemporaryDirectory() as tmp:
            spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_file.write_text(json.dumps(spec))
            Path(spec["out"]).unlink(missing_ok=True)  # never reuse a cached prediction
            subprocess.run([sys.executable, __file__, "--worker", str(spec_file), str(result_file)], check=True,
                           cwd=ROOT)
            result = json.loads(result_file.read_text())
        if result.get("other_processes_cpu_cores", 0) <= 0.25 or attempt == 1 or not wait_s:
            return result
        print(f"    contended ({result['other_processes_cpu_cores']:.1f} cores used by other processes): rerunning",
              flush=True)
    return result


# ------------------------------------------------------------------------------------------------- report


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (header, key, format)."""
    cells = [[h for h, _, _ in columns]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else format(r[k], f) for _, k, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def warn_contention(rows: list[dict]) -> None:
    busy = [r for r in rows if r.get("other_processes_cpu_cores", 0) > 0.25]
    if busy:
        print(f"  WARNING: other processes kept {max(r['other_processes_cpu_cores'] for r in busy):.1f} CPU cores busy "
              "during some runs: their timings are slowed by contention; rerun on an idle machine to compare")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_comparison(args, device: str, shape: tuple[int, int, int], tta: bool, wait_s: float, progress: bool) -> dict:
    """Section 1: ours vs nnUNetPredictor on the same volume and network, each in a fresh process."""
    gpu = device == "cuda"
    print(f"\n[1] comparison on a SYNTHETIC kidney-like volume {'x'.join(map(str, shape))} (uint16, no zero voxels), "
          f"configuration {args.configuration!r}, tile step 0.5, Gaussian, "
          f"TTA {'on (8 mirrorings)' if tta else 'off'}, 1 tile per forward pass", flush=True)
    vol_file, intensity = comparison_input(shape)
    spacing = 0.05  # plans spacing = the volume's: nothing is resampled by either method
    methods = [("nnunet", "nnUNetPredictor"), ("ours", "ours (predict_group)")]
    if args.fp32_reference:
        methods.append(("nnunet_fp32", "nnUNetPredictor fp32 buffers"))
    runs: dict[str, list[dict]] = {m: [] for m, _ in methods}
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as tmp:
        for repeat in range(args.repeats):  # methods alternate, so that slow drifts hit all of them
            for method, label in methods:
                print(f"  running {label} in a fresh process"
                      + (f" (repeat {repeat + 1}/{args.repeats})" if args.repeats > 1 else "") + " ...", flush=True)
                spec = {"method": "ours" if method == "ours" else "nnunet", "fp32_buffers": method == "nnunet_fp32",
                        "configuration": args.configuration, "device": device,
                        "threads": args.threads, "tta": tta, "batch_size": args.batch_size if method == "ours" else 1,
                        "spacing_mm": spacing, "intensity": intensity, "volume": str(vol_file),
                        "out": str(Path(tmp) / f"{method}.npy"), "dtype": "float32", "progress": progress}
                r = run_worker(spec, wait_s)
                r["label"] = label
                r["Mvox_per_s"] = np.prod(shape) / r["seconds"] / 1e6
                runs[method].append(r)
                print(f"    {r['seconds']:.1f} s, peak extra {r['peak_extra_MiB'] or float('nan'):.0f} MiB, "
                      f"other processes busy {r['other_processes_cpu_cores']:.2f} cores", flush=True)
        rows = []
        for method, _ in methods:  # the fastest repeat of each method (its memory is from the same run)
            best = dict(min(runs[method], key=lambda r: r["seconds"]))
            best["seconds_all_repeats"] = [r["seconds"] for r in runs[method]]
            best["peak_extra_MiB_all_repeats"] = [r["peak_extra_MiB"] for r in runs[method]]
            rows.append(best)
        mine = np.load(Path(tmp) / "ours.npy")
        diff = np.abs(np.load(Path(tmp) / "nnunet.npy") - mine)
        worst = np.unravel_index(int(diff.argmax()), diff.shape)
        diffs = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                 "median_abs_diff": float(np.median(diff)), "p99_9_abs_diff": float(np.percentile(diff, 99.9)),
                 "share_above_1e-2": float((diff > 1e-2).mean()), "argmax_zyx": [int(i) for i in worst]}
        if args.fp32_reference:
            ref = np.abs(np.load(Path(tmp) / "nnunet_fp32.npy") - mine)
            diffs.update({"fp32_max_abs_diff": float(ref.max()), "fp32_mean_abs_diff": float(ref.mean())})
            del ref
        del mine, diff
    nn_row, our_row = rows[0], rows[1]
    ratio = nn_row["seconds"] / our_row["seconds"]
    for r in rows:
        r["cpu_seconds"] = r["own_cpu_cores"] * r["seconds"]
    columns = [("method", "label", "s"), ("wall s", "seconds", ".2f"), ("CPU s", "cpu_seconds", ".1f"),
               ("Mvox/s", "Mvox_per_s", ".3f"),
               ("RSS before MiB", "rss_before_MiB", ".0f"), ("peak extra MiB", "peak_extra_MiB", ".0f"),
               ("anon extra MiB", "peak_anon_extra_MiB", ".0f"), ("absolute peak MiB", "peak_absolute_MiB", ".0f")]
    if gpu:
        columns += [("CUDA max alloc MiB", "cuda_max_allocated_MiB", ".0f"),
                    ("CUDA extra MiB", "cuda_extra_MiB", ".0f")]
    else:
        columns += [("other procs (cores)", "other_processes_cpu_cores", ".2f")]
    print(table(rows, columns))
    warn_contention(rows)
    print(f"  network: {our_row['network_parameters'] / 1e6:.2f} M parameters, patch "
          f"{'x'.join(map(str, our_row['patch_size']))}; ours writes a float32 .npy memmap, nnUNetPredictor "
          f"returns (2, Z, H, W) float32 probabilities (and accumulates logits in float16)")
    if args.repeats > 1:
        for r in rows:
            print(f"  {r['label']}: wall s of the {args.repeats} repeats: "
                  + ", ".join(f"{t:.2f}" for t in r["seconds_all_repeats"]))
    print(f"  throughput ratio ours/nnUNetPredictor (nnUNet time / our time): {ratio:.2f}x; "
          f"peak extra memory ours/nnUNet: {our_row['peak_extra_MiB'] / nn_row['peak_extra_MiB']:.2f}")
    print(f"  |p_ours - p_nnUNetPredictor|: max {diffs['max_abs_diff']:.2e} (at z,y,x {tuple(diffs['argmax_zyx'])}), "
          f"mean {diffs['mean_abs_diff']:.2e}, median {diffs['median_abs_diff']:.1e}, "
          f"99.9th pct {diffs['p99_9_abs_diff']:.1e}, share > 1e-2: {diffs['share_above_1e-2']:.1e}")
    if args.fp32_reference:
        print(f"  |p_ours - p_nnUNetPredictor with float32 buffers| (torch.half patched, as tests/test_predictor.py): "
              f"max {diffs['fp32_max_abs_diff']:.2e}, mean {diffs['fp32_mean_abs_diff']:.2e}: the rest is the "
              f"float16 accumulation of the shipped predictor")
    out = {"shape": list(shape), "configuration": args.configuration, "tta": tta, "tile_step": 0.5,
           "intensity": intensity, "spacing_mm": spacing, "nnunet": nn_row, "ours": our_row, "time_ratio": ratio,
           **diffs}
    if args.fp32_reference:
        out["nnunet_fp32"] = rows[2]
    return out


def run_views(args, device: str, wait_s: float, progress: bool) -> dict:
    """Section 3: the predictor's time over the network's own forward time on the same tiles (z-view and axes),
    and the speed-up of two worker processes (devices) over one."""
    shape = tuple(args.views_shape)
    n_dev = 2 if device == "cpu" else max(1, _cuda_count())
    devices = ["cpu"] * 2 if device == "cpu" else [f"cuda:{i}" for i in range(n_dev)]
    print(f"\n[3] views and devices on a SYNTHETIC volume {'x'.join(map(str, shape))}, configuration "
          f"{args.configuration!r}, float16 output: predictor time / the network's own forward time on the same "
          f"tiles; {len(devices)} workers ({', '.join(devices)}) vs one", flush=True)
    vol_file, intensity = comparison_input(shape)
    runs = [("none", None, True), ("axes", None, True), ("none", devices, False)]
    rows = []
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as tmp:
        for tta, devs, forward in runs:
            label = f"tta={tta}, " + (f"{len(devs)} workers" if devs else "in-process")
            print(f"  running {label} in a fresh process ...", flush=True)
            spec = {"method": "ours", "configuration": args.configuration, "device": device, "threads": args.threads,
                    "tta": tta, "batch_size": args.batch_size, "spacing_mm": 0.05, "intensity": intensity,
                    "volume": str(vol_file), "out": str(Path(tmp) / f"{tta}_{len(devs or [1])}.npy"),
                    "dtype": "float16", "progress": progress, "devices": devs, "forward_only": forward}
            r = run_worker(spec, wait_s)
            r["label"] = label
            rows.append(r)
            print(f"    {r['seconds']:.1f} s" + (f", network alone {r['forward_seconds']:.1f} s on {r['tiles']} tiles "
                                               f"-> {r['overhead_ratio']:.3f}x; the run's own network calls "
                                               f"{r['network_in_run_seconds']:.1f} s -> {r['in_run_ratio']:.3f}x"
                                               if forward else "")
                  + f", other processes busy {r['other_processes_cpu_cores']:.2f} cores", flush=True)
    columns = [("run", "label", "s"), ("wall s", "seconds", ".1f"), ("network alone s", "forward_seconds", ".1f"),
               ("predictor / network", "overhead_ratio", ".3f"), ("its network calls s", "network_in_run_seconds", ".1f"),
               ("predictor / its calls", "in_run_ratio", ".3f"), ("anon extra MiB", "peak_anon_extra_MiB", ".0f"),
               ("other procs (cores)", "other_processes_cpu_cores", ".2f")]
    print(table(rows, columns))
    warn_contention(rows)
    speedup = rows[0]["seconds"] / rows[2]["seconds"]
    print(f"  {len(devices)} workers vs one ({args.threads} torch threads in one process, split between the "
          f"workers on the CPU): {speedup:.2f}x")
    return {"shape": list(shape), "runs": rows, "workers_speedup": speedup, "devices": devices}


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def run_depth(args, device: str, wait_s: float, progress: bool, report: dict, save_report) -> dict:
    """Section 2: predict_group's peak memory on a full-size synthetic kidney at two depths."""
    from lib import data
    from tools import synthetic

    gpu = device == "cuda"
    full_config = args.full_configuration or (args.configuration if gpu else "stub")
    preset = "small" if args.quick else "full"
    n_slices = synthetic.PRESETS[preset].shapes[args.full_group][0]
    depths = args.full_depths or ([32, n_slices] if args.quick else [128, n_slices])
    depths = sorted({min(d, n_slices) for d in depths})
    what = ("a 1x1x1 conv STUB network with the tiny plans (patch 32x64x64): the predictor's own buffers, "
            "tiling and I/O" if full_config == "stub" else f"configuration {full_config!r}")
    print(f"\n[2] predict_group peak memory vs depth on a SYNTHETIC {args.full_group} (preset {preset!r}), {what}, "
          f"TTA {args.full_tta} (ours), float16 output; nnUNetPredictor with the same network at the smallest depth",
          flush=True)
    workers = args.render_workers if args.render_workers is not None else ((os.cpu_count() or 1) - 1
                                                                             if (os.cpu_count() or 1) >= 8 else 0)
    root = full_size_root(args.full_group, preset, max(depths), workers)
    group = data.open_group(args.full_group, root)
    full_shape = synthetic.PRESETS[preset].shapes[args.full_group]
    mid = group.read_images(group.shape[0] // 2, group.shape[0] // 2 + 3)
    full_intensity = intensity_stats(mid[:, ::4, ::4])
    del mid
    nn_depth = args.full_nnunet_depth if args.full_nnunet_depth is not None else min(depths)
    runs = [("ours", d) for d in depths]
    if nn_depth:  # nnUNetPredictor on the same network right after ours at its smallest depth
        runs.insert(1, ("nnunet", min(nn_depth, n_slices)))
    rows = []
    report["depth"] = {"group": args.full_group, "preset": preset, "full_shape": list(full_shape), "root": str(root),
                       "configuration": full_config, "tta": args.full_tta, "dtype": "float16", "runs": rows,
                       "intensity": full_intensity}
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as tmp:
        for method, depth in runs:
            label = "ours (predict_group)" if method == "ours" else "nnUNetPredictor"
            print(f"  running {label} on the first {depth} of {full_shape[0]} slices "
                  f"({depth}x{full_shape[1]}x{full_shape[2]}) in a fresh process ...", flush=True)
            spec = {"method": method, "configuration": full_config, "device": device, "threads": args.threads,
                    "tta": args.full_tta if method == "ours" else False,
                    "batch_size": args.batch_size if method == "ours" else 1,
                    "spacing_mm": group.voxel_um / 1000,
                    "intensity": full_intensity, "root": str(root), "group": args.full_group, "depth": depth,
                    "out": str(Path(tmp) / f"{method}_{depth}.npy"), "dtype": "float16", "progress": progress}
            r = run_worker(spec, wait_s)
            h, w = full_shape[1:]
            pz = r["patch_size"][0]
            r["bound_MiB"] = 8 * pz * h * w / MIB  # two float32 buffers of one patch depth
            r["bound_plus_network_MiB"] = r["bound_MiB"] + r["network_MiB"]
            r["slices_per_s"] = depth / r["seconds"]
            r["depth"] = depth
            r["label"] = label
            r["run"] = f"{depth}x{h}x{w}"
            if method == "nnunet":
                mine = Path(tmp) / f"ours_{depth}.npy"
                if mine.is_file():
                    a = np.load(mine, mmap_mode="r")
                    b = np.load(spec["out"], mmap_mode="r")
                    r["max_abs_diff_vs_ours"] = max(
                        float(np.abs(a[z].astype(np.float32) - b[z].astype(np.float32)).max()) for z in range(depth))
                Path(spec["out"]).unlink(missing_ok=True)
            rows.append(r)
            save_report()
            print(f"    {r['seconds']:.1f} s, peak extra {r['peak_extra_MiB'] or float('nan'):.0f} MiB (anon "
                  f"{r['peak_anon_extra_MiB']:.0f}), other processes busy {r['other_processes_cpu_cores']:.2f} cores",
                  flush=True)
    columns = [("method", "label", "s"), ("run (slices x H x W)", "run", "s"), ("wall s", "seconds", ".1f"),
               ("slices/s", "slices_per_s", ".2f"), ("peak extra MiB", "peak_extra_MiB", ".0f"),
               ("anon extra MiB", "peak_anon_extra_MiB", ".0f"),
               ("file-backed extra MiB", "peak_file_extra_MiB", ".0f"),
               ("bound MiB", "bound_plus_network_MiB", ".0f"), ("absolute peak MiB", "peak_absolute_MiB", ".0f")]
    if gpu:
        columns += [("CUDA max alloc MiB", "cuda_max_allocated_MiB", ".0f")]
    else:
        columns += [("other procs (cores)", "other_processes_cpu_cores", ".2f")]
    print(table(rows, columns))
    warn_contention(rows)
    print(f"  bound (docs/design.md): 8 * patch_z * H * W bytes + the network = 8 * {pz} * "
          f"{h} * {w} B + {rows[0]['network_MiB']:.1f} MiB = {rows[0]['bound_plus_network_MiB']:.0f} "
          f"MiB; no resampling (plans spacing = the group's {group.voxel_um} um)")
    print("  'peak extra' = VmHWM - VmRSS before; it counts the output memmap's pages ('file-backed': page cache the "
          "kernel can write back and drop), 'anon' is the part that must fit in RAM")
    out = report["depth"]
    ours = [r for r in rows if r["label"].startswith("ours")]
    if len(ours) > 1:
        a, b = ours[0], ours[-1]
        out["anon_growth_MiB"] = b["peak_anon_extra_MiB"] - a["peak_anon_extra_MiB"]
        out["extra_growth_MiB"] = b["peak_extra_MiB"] - a["peak_extra_MiB"]
        print(f"  ours from {a['depth']} to {b['depth']} slices: anonymous peak {a['peak_anon_extra_MiB']:.0f} -> "
              f"{b['peak_anon_extra_MiB']:.0f} MiB, file-backed (the output memmap) {a['peak_file_extra_MiB']:.0f} -> "
              f"{b['peak_file_extra_MiB']:.0f} MiB (output size {a['depth'] * h * w * 2 / MIB:.0f} -> "
              f"{b['depth'] * h * w * 2 / MIB:.0f} MiB)")
    for r in rows:
        if "max_abs_diff_vs_ours" in r:
            print(f"  |p_ours - p_nnUNetPredictor| at {r['run']} (float16 stored): max {r['max_abs_diff_vs_ours']:.1e}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    ap.add_argument("--configuration", choices=sorted(CONFIG_VARIANTS), default="tiny",
                    help="tiny: the 'small' v1 variant (patch 32x64x64); hepatic: the Task008 network "
                         "(patch 64x192x192, meant for a GPU)")
    ap.add_argument("--shape", type=int, nargs=3, metavar=("Z", "H", "W"), default=None,
                    help="comparison volume (default 64 192 192; 160 448 448 with cuda and hepatic; 40 96 96 quick)")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="mirroring TTA (8 passes per tile) in the comparison; default: on for cuda, off for cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in every worker")
    ap.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass in ours (nnUNetPredictor: 1)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per method in section 1 (each in a fresh process); the fastest is reported")
    ap.add_argument("--fp32-reference", action=argparse.BooleanOptionalAction, default=True,
                    help="also run nnUNetPredictor with float32 accumulators (a diff reference)")
    ap.add_argument("--quick", action="store_true", help="smallest run (smoke check; depth section on preset small)")
    ap.add_argument("--skip-comparison", action="store_true", help="skip section 1")
    ap.add_argument("--skip-full", action="store_true", help="skip section 2 (full-size depth)")
    ap.add_argument("--full-group", default="kidney_6", help="synthetic full-size group for section 2")
    ap.add_argument("--full-tta", default="none", choices=["none", "flips", "axes", "axes+flips"],
                    help="TTA of ours in section 2 ('axes': the y/x-views through disk memmaps)")
    ap.add_argument("--skip-views", action="store_true", help="skip section 3 (views, overhead, workers)")
    ap.add_argument("--views-shape", type=int, nargs=3, metavar=("Z", "H", "W"), default=(64, 128, 128),
                    help="volume of section 3")
    ap.add_argument("--full-depths", type=int, nargs="+", default=None,
                    help="numbers of leading slices of the full-size group to run (default: 128 and all)")
    ap.add_argument("--full-nnunet-depth", type=int, default=None,
                    help="also run nnUNetPredictor (same network) on this many leading slices of the full-size "
                         "group, in memory (default: the smallest of --full-depths; 0: skip)")
    ap.add_argument("--full-configuration", choices=FULL_CONFIGS, default=None,
                    help="network for section 2 (default on cpu: stub, a 1x1x1 conv with the tiny plans' patch "
                         "32x64x64, so that the predictor itself is measured in minutes; on cuda: --configuration)")
    ap.add_argument("--render-workers", type=int, default=None,
                    help="when the full-size kidney is not cached: >1 renders just the needed slices in that many "
                         "processes, else tools.synthetic.generate writes the whole group (default: cores-1 when "
                         ">= 8 cores, else 0)")
    ap.add_argument("--wait-idle", type=float, default=None,
                    help="before each run wait up to this many seconds for other processes to leave the CPUs "
                         "idle, and rerun a contended run once (default 300 on cpu, 0 on cuda and with --quick)")
    ap.add_argument("--json", type=Path, default=OUT_DIR / "inference.json", help="where to write the results")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        result = worker(json.loads(Path(args.worker[0]).read_text()))
        Path(args.worker[1]).write_text(json.dumps(result))
        return result

    device = args.device or default_device()
    gpu = device == "cuda"
    report: dict = {"device": device, "threads": args.threads, "quick": args.quick,
                    "weights": "RANDOM (speed and memory do not depend on the weights)"}
    if gpu:
        import torch

        if not torch.cuda.is_available():  # (no CUDA context here: the GPU is left to the workers)
            ap.error("--device cuda: no CUDA device available")
    tta = args.tta if args.tta is not None else gpu
    wait_s = args.wait_idle if args.wait_idle is not None else (0.0 if gpu or args.quick else 300.0)
    default_shape = (40, 96, 96) if args.quick else (160, 448, 448) if gpu and args.configuration == "hepatic" \
        else (64, 192, 192)
    shape = tuple(args.shape or default_shape)
    progress = sys.stderr.isatty()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()
    print(f"Streaming predictor (lib/predictor.py) vs nnUNetPredictor: device {device}, torch threads {args.threads}; "
          "RANDOM weights (speed and memory do not depend on the weights)")

    summary = [f"SUMMARY ({device}, RANDOM weights)"]
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def save_report() -> None:  # after every section and run, so that a killed run still leaves its results
        report["seconds"] = time.perf_counter() - total_start
        args.json.write_text(json.dumps(report, indent=2) + "\n")

    if not args.skip_comparison:
        c = report["comparison"] = run_comparison(args, device, shape, tta, wait_s, progress)
        report["cuda_device"] = c["ours"].get("cuda_device")
        save_report()
        summary.append(f"{args.configuration} {'x'.join(map(str, shape))} TTA {'on' if tta else 'off'}: ours "
                       f"{c['ours']['seconds']:.1f} s vs nnUNetPredictor {c['nnunet']['seconds']:.1f} s -> "
                       f"{c['time_ratio']:.2f}x throughput; peak extra RSS {c['ours']['peak_extra_MiB']:.0f} vs "
                       f"{c['nnunet']['peak_extra_MiB']:.0f} MiB"
                       + (f", CUDA max allocated {c['ours']['cuda_max_allocated_MiB']:.0f} vs "
                          f"{c['nnunet']['cuda_max_allocated_MiB']:.0f} MiB" if gpu else "")
                       + f"; max |diff| {c['max_abs_diff']:.1e}"
                       + (f" ({c['fp32_max_abs_diff']:.1e} vs fp32 buffers)" if args.fp32_reference else ""))
    if not args.skip_views:
        v = report["views"] = run_views(args, device, wait_s, progress)
        save_report()
        summary.append("predictor / network alone (/ its own network calls): " + ", ".join(
            f"{r['label']} {r['overhead_ratio']:.3f}x ({r['in_run_ratio']:.3f}x)" for r in v["runs"]
            if "overhead_ratio" in r)
            + f"; {len(v['devices'])} workers vs one: {v['workers_speedup']:.2f}x")
    if not args.skip_full:
        d = report["depth"] = run_depth(args, device, wait_s, progress, report, save_report)
        report.setdefault("cuda_device", d["runs"][0].get("cuda_device") if d["runs"] else None)
        runs = d["runs"]
        summary.append(f"{d['configuration']} network on {d['group']} ({d['preset']}): "
                       + ", ".join(f"{r['label'].split()[0]} {r['run']}: RSS +{r['peak_extra_MiB']:.0f} MiB "
                                   f"(anon +{r['peak_anon_extra_MiB']:.0f})"
                                   + (f", CUDA {r['cuda_max_allocated_MiB']:.0f} MiB" if gpu else "") for r in runs)
                       + f"; stated bound {runs[0]['bound_plus_network_MiB']:.0f} MiB")
    save_report()
    print("\n" + "; ".join(summary) + f"\nresults: {args.json} (total {report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
