"""One short GPU check (about 8 minutes on an H100/H200): fine-tuning speed and memory, then inference.

1. Fine-tune the `hepatic` configuration (the real Task008-sized network, 31 M parameters, full patch
   64x192x192, batch 2) for a few iterations from a converted v1-format archive (RANDOM weights written by
   `tools.v1_checkpoint.write_v1_archive`; from scratch, same network, if nnU-Net v1 is not installed) on the
   SYNTHETIC `small` preset, through the project's own `lib.training.fine_tune.train`. Records iterations/s (steady
   state: per-step times from a wrapper around nnUNetTrainer.train_step, plus the trainer's own epoch
   timestamps), the time to the first step, and peak GPU memory (torch.cuda.max_memory_allocated/reserved
   and device-wide used memory sampled with cudaMemGetInfo).
2. `benchmarks/inference.py --device cuda --configuration hepatic`: the streaming predictor vs
   nnUNetPredictor (time, memory, difference), then, if the time budget allows, predict_group on a full-size
   synthetic kidney_6 (1028 x 1257 in-plane) at two depths, rendered in parallel on the CPU cores.
3. Everything printed as it goes, with `nvidia-smi`, and written as JSON to $OUT/gpu_check.json when OUT is
   set (else outputs/benchmarks/gpu_check.json); step logs go beside it (logs/).

Every step runs in its own subprocess with a timeout inside the overall `--budget`, so one failure or
overrun still reports the others. Run `python benchmarks/gpu_check.py` from the repository root after
`pip install --no-deps -e .` (or with `PYTHONPATH=.` where the project cannot be installed).

CPU rehearsal (same steps, tiny network, 2 iterations, the full 64x192x192 patch on the small volumes):
`python benchmarks/gpu_check.py --device cpu --tiny`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
START = time.monotonic()


def elapsed() -> float:
    return time.monotonic() - START


def say(text: str) -> None:
    print(f"[{elapsed():6.1f} s] {text}", flush=True)


def out_dir() -> Path:
    out = os.environ.get("OUT")
    return Path(out) if out else ROOT / "outputs" / "benchmarks"


# --------------------------------------------------------------------------------------- environment


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi: not found"
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,"
                                "utilization.gpu,temperature.gpu,power.draw,clocks.sm", "--format=csv"],
                               capture_output=True, text=True, timeout=30)
        table = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        return (query.stdout + query.stderr).strip() + "\n" + table.stdout.strip()
    except Exception as e:  # a broken driver must not stop the check
        return f"nvidia-smi failed: {type(e).__name__}: {e}"


def environment() -> dict:
    info: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        info["ram_GiB"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name()
            props = torch.cuda.get_device_properties(0)
            info["device_memory_GiB"] = round(props.total_memory / 2**30, 1)
            info["cudnn"] = torch.backends.cudnn.version()
    except Exception as e:
        info["torch_error"] = f"{type(e).__name__}: {e}"
    for module in ("nnunetv2", "nnunet", "dynamic_network_architectures"):
        try:
            from importlib.metadata import version

            info[module] = version(module)
        except Exception:
            info[module] = None
    return info


# ----------------------------------------------------------------------------------- step 1: training


class MemorySampler(threading.Thread):
    """Peak device-wide used GPU memory (cudaMemGetInfo: total - free, all processes and the CUDA context)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.done, self.peak = interval, threading.Event(), 0

    def run(self) -> None:
        import torch

        while not self.done.is_set():
            try:
                free, total = torch.cuda.mem_get_info()
                self.peak = max(self.peak, total - free)
            except Exception:
                return
            self.done.wait(self.interval)

    def stop(self) -> int:
        self.done.set()
        self.join(timeout=5)
        return self.peak


def train_step_worker(spec: dict) -> dict:
    """Step 1 in this (fresh) process: synthetic data, v1 archive, lib.training.fine_tune.train with timings."""
    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from lib.model import architectures
    from lib.training import fine_tune
    from tools import synthetic, v1_checkpoint

    result: dict = {"configuration": spec["configuration"], "device": spec["device"],
                    "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA"), "phases_s": {}}
    work = Path(spec["work_dir"])
    cuda = spec["device"] == "cuda"
    t = time.perf_counter()
    root = work / "synthetic-small"
    if not (root / "synthetic.json").is_file():
        groups = [*fine_tune.TrainSettings().train_groups, fine_tune.TrainSettings().val_group]
        synthetic.generate(root, "small", 0, groups=groups, force=True, progress=False)
    result["phases_s"]["synthetic_small_data"] = time.perf_counter() - t
    say(f"  synthetic 'small' root ready ({result['phases_s']['synthetic_small_data']:.1f} s): {root}")

    variant = fine_tune.ARCHITECTURES[spec["configuration"]]
    pretrained = None
    t = time.perf_counter()
    try:
        archive = work / f"Task008_HepaticVessel_{variant}_random.zip"
        if not archive.is_file():
            v1_checkpoint.write_v1_archive(archive, architectures.variant_plans(variant), seed=0,
                                           configurations=("3d_fullres",))
        pretrained = str(archive)
        result["pretrained"] = f"{archive.name}: RANDOM weights in nnU-Net v1 format (variant {variant})"
        say(f"  v1 archive written ({time.perf_counter() - t:.1f} s, {archive.stat().st_size / MIB:.0f} MiB)")
    except ImportError as e:
        result["pretrained"] = f"none: nnU-Net v1 not importable ({e}); training FROM SCRATCH (same network)"
        say(f"  WARNING: {result['pretrained']}")
    result["phases_s"]["v1_archive"] = time.perf_counter() - t

    # Time the phases of train() and every training step (wrappers only measure; behaviour is unchanged).
    steps: list[tuple[float, float]] = []  # (start, end) of each train_step, perf_counter
    original_step = nnUNetTrainer.train_step

    def timed_step(self, batch):
        t0 = time.perf_counter()
        out = original_step(self, batch)  # returns the loss as numpy: the GPU work is finished here
        steps.append((t0, time.perf_counter()))
        return out

    nnUNetTrainer.train_step = timed_step
    for name in ("architecture_plans", "prepare"):
        fn = getattr(fine_tune, name, None)
        if fn is None:  # lib/training/fine_tune.py reorganised: time train() as a whole only
            continue

        def wrapped(*a, _fn=fn, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                result["phases_s"][_name] = time.perf_counter() - t0
                say(f"  train(): {_name} done ({result['phases_s'][_name]:.1f} s)")
        setattr(fine_tune, name, wrapped)

    settings = fine_tune.TrainSettings(
        configuration=spec["configuration"], pretrained=pretrained, epochs=spec["epochs"],
        iterations_per_epoch=spec["iterations"], val_iterations_per_epoch=spec["val_iterations"],
        patch_size=tuple(spec["patch_size"]) if spec.get("patch_size") else None, batch_size=spec["batch_size"],
        device=spec["device"])
    result["settings"] = {k: getattr(settings, k) for k in ("configuration", "epochs", "iterations_per_epoch",
                                                            "val_iterations_per_epoch", "patch_size", "batch_size")}
    sampler = None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        sampler = MemorySampler()
        sampler.start()
    t = time.perf_counter()
    run = fine_tune.train(root, work / "run", settings, progress=False)
    result["phases_s"]["train_total"] = time.perf_counter() - t
    result["train_seconds_reported"] = run.seconds  # trainer.run_training only
    if cuda:
        result["cuda_max_allocated_MiB"] = torch.cuda.max_memory_allocated() / MIB
        result["cuda_max_reserved_MiB"] = torch.cuda.max_memory_reserved() / MIB
        result["device_used_peak_MiB"] = sampler.stop() / MIB

    record = json.loads((run.model_dir / "training.json").read_text())
    result["patch_size"] = record.get("patch_size")
    result["n_parameters"] = None
    if run.pretrained:
        result["n_parameters"] = run.pretrained.get("parameters_loaded")
    durations = np.array([b - a for a, b in steps])
    ends = np.array([b for _, b in steps])
    per_epoch = spec["iterations"]
    result["train_steps"] = len(steps)
    result["first_step_s"] = float(durations[0]) if len(durations) else None
    if len(steps) >= 2:
        # Steady state: the last epoch, or every step but the first (warm-up) when there is one epoch.
        window = slice(len(steps) - per_epoch, None) if len(steps) > per_epoch else slice(1, None)
        d, e = durations[window], ends[window]
        result["step_s_median"] = float(np.median(d))
        result["step_s_mean"] = float(d.mean())
        result["iterations_per_s_compute"] = float(1 / np.median(d))  # train_step alone (forward+backward+step)
        if len(e) >= 2:  # end to end: also waiting for the augmentation workers
            result["iterations_per_s_end_to_end"] = float((len(e) - 1) / (e[-1] - e[0]))
        result["step_s_all"] = [round(float(x), 4) for x in durations]
    starts, stops = run.history.get("epoch_start_timestamps", []), run.history.get("epoch_end_timestamps", [])
    result["epoch_s"] = [b - a for a, b in zip(starts, stops)]
    result["iterations_per_s_by_epoch"] = [per_epoch / s for s in result["epoch_s"] if s > 0]  # incl. val + checkpoint
    result["train_losses"] = run.history.get("train_losses")
    result["val_losses"] = run.history.get("val_losses")
    return result


def run_subprocess(cmd: list[str], log: Path, timeout: float, env: dict | None = None,
                   echo: bool = False) -> tuple[int | None, str]:
    """Run `cmd` in its own process group, output to `log` (and to stdout if `echo`); on timeout the whole
    group (augmentation workers included) is killed. Returns (returncode or None on timeout, output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, bufsize=1)
        deadline = time.monotonic() + timeout
        lines: list[str] = []

        def pump():
            for line in proc.stdout:
                f.write(line)
                f.flush()
                lines.append(line)
                if echo:
                    print(line, end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = None
        reader.join(timeout=10)
        try:  # stray children of the group (e.g. augmentation workers) must not outlive the step
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return code, "".join(lines)


def tail(text: str, n: int = 25) -> str:
    lines = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
    return "\n".join("    | " + row for row in lines[-n:])


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true",
                    help="rehearsal: tiny configuration, 2 iterations, quick inference benchmark (for the CPU)")
    ap.add_argument("--budget", type=float, default=450, help="seconds for the whole script (steps get timeouts)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    ap.add_argument("--val-iterations", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--patch", type=int, nargs=3, default=None,
                    help="training patch (default: the hepatic 64 192 192, also with --tiny)")
    ap.add_argument("--da-workers", type=int, default=None,
                    help="nnUNet_n_proc_DA (default: 8 with >= 12 cores, else cores/2, at least 1)")
    ap.add_argument("--train-timeout", type=float, default=None,
                    help="seconds for step 1 (default 260, 900 with --tiny), always within --budget")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--skip-full", action="store_true", help="no full-size kidney_6 depth runs in step 2")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "gpu_check_work",
                    help="scratch folder (synthetic data, archive, nnU-Net folders); emptied at the start")
    ap.add_argument("--step", nargs=2, help=argparse.SUPPRESS)  # internal: run step 1 in a subprocess
    ap.add_argument("--env", help=argparse.SUPPRESS)  # internal: write environment() as JSON
    args = ap.parse_args(argv)
    if args.env:
        info = environment()
        Path(args.env).write_text(json.dumps(info, indent=2, default=str))
        return info
    if args.step:
        spec = json.loads(Path(args.step[0]).read_text())
        result = train_step_worker(spec)
        Path(args.step[1]).write_text(json.dumps(result, indent=2, default=str))
        return result

    out = out_dir()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "steps": {}}
    json_file = out / "gpu_check.json"

    def save() -> None:
        report["elapsed_s"] = elapsed()
        json_file.write_text(json.dumps(report, indent=2, default=str) + "\n")

    # ---- 0. environment (in a subprocess: this process never creates a CUDA context, the steps own the GPU)
    say("environment")
    try:
        env_file = args.work_dir.parent / "gpu_check_env.json"
        env_file.parent.mkdir(parents=True, exist_ok=True)
        code, text = run_subprocess([sys.executable, __file__, "--env", str(env_file)], logs / "env.log", 120)
        env_info = json.loads(env_file.read_text()) if code == 0 else {"error": text[-2000:]}
        report["environment"] = env_info
        for k, v in env_info.items():
            print(f"    {k}: {v}")
        if args.device == "cuda" and not env_info.get("cuda_available"):
            print("    WARNING: --device cuda but torch sees no CUDA device; the steps will fail")
    except Exception:
        report["environment"] = {"error": traceback.format_exc()}
        print(traceback.format_exc())
    smi = nvidia_smi()
    report["nvidia_smi_start"] = smi
    print(smi)
    save()

    cores = os.cpu_count() or 1
    da = args.da_workers or (8 if cores >= 12 else max(1, cores // 2))
    child_env = {**os.environ, "nnUNet_n_proc_DA": str(da), "nnUNet_compile": "false",
                 "nnUNet_def_n_proc": str(min(8, cores)), "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)

    def remaining() -> float:
        return args.budget - elapsed()

    # ---- 1. training
    if not args.skip_train:
        configuration = "tiny" if args.tiny else "hepatic"
        spec = {"configuration": configuration, "device": args.device, "work_dir": str(args.work_dir),
                "epochs": args.epochs, "iterations": 2 if args.tiny else args.iterations,
                "val_iterations": 1 if args.tiny else args.val_iterations, "batch_size": args.batch_size,
                "patch_size": args.patch or [64, 192, 192]}
        cap = args.train_timeout or (900.0 if args.tiny else 260.0)
        timeout = max(30.0, min(cap, remaining() - 170))
        say(f"step 1: fine-tune '{configuration}' ({spec['epochs']} epochs x {spec['iterations']} iterations, "
            f"batch {spec['batch_size']}, patch {spec['patch_size']}, nnUNet_n_proc_DA={da}) on {args.device}; "
            f"timeout {timeout:.0f} s")
        step: dict = {"spec": spec, "timeout_s": timeout}
        t = time.perf_counter()
        try:
            spec_file, result_file = args.work_dir / "train_spec.json", args.work_dir / "train_result.json"
            spec_file.write_text(json.dumps(spec))
            code, text = run_subprocess([sys.executable, __file__, "--step", str(spec_file), str(result_file)],
                                        logs / "train.log", timeout, child_env, echo=False)
            step["returncode"] = code
            step["wall_s"] = time.perf_counter() - t
            if result_file.is_file():
                step["result"] = json.loads(result_file.read_text())
            for line in text.splitlines():  # the step's own progress lines
                if line.startswith("[") and " s]   " in line:
                    print("   " + line)
            if code != 0 or "result" not in step:
                step["error"] = "timed out" if code is None else f"exit code {code}"
                print(f"    FAILED ({step['error']}); last lines of {logs / 'train.log'}:\n{tail(text)}")
            else:
                r = step["result"]
                print(f"    done in {step['wall_s']:.0f} s; phases: "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in r["phases_s"].items()))
                print(f"    pretrained: {r.get('pretrained')}; patch {r.get('patch_size')}, "
                      f"{r['train_steps']} train steps; first step {r['first_step_s']:.2f} s")
                if "iterations_per_s_compute" in r:
                    print(f"    steady state: {r['iterations_per_s_compute']:.2f} it/s from train_step alone (median "
                          f"{r['step_s_median'] * 1000:.0f} ms), "
                          f"{r.get('iterations_per_s_end_to_end', float('nan')):.2f} it/s end to end "
                          f"(incl. waiting for data augmentation)")
                print("    epochs (trainer timestamps, incl. validation and checkpoint): "
                      + ", ".join(f"{s:.1f} s" for s in r["epoch_s"]) + " -> "
                      + ", ".join(f"{v:.2f} it/s" for v in r["iterations_per_s_by_epoch"]))
                if "cuda_max_allocated_MiB" in r:
                    print(f"    peak GPU memory: max allocated {r['cuda_max_allocated_MiB']:.0f} MiB, max reserved "
                          f"{r['cuda_max_reserved_MiB']:.0f} MiB, device-wide used {r['device_used_peak_MiB']:.0f} MiB")
                print(f"    losses: train {r.get('train_losses')}, val {r.get('val_losses')}")
        except Exception:
            step["error"] = traceback.format_exc()
            print(step["error"])
        report["steps"]["train"] = step
        save()

    # ---- 2. inference
    if not args.skip_inference:
        device = args.device
        base = [sys.executable, "benchmarks/inference.py", "--device", device]
        base += ["--configuration", "tiny", "--quick"] if args.tiny else ["--configuration", "hepatic"]
        comp_json, depth_json = out / "inference.json", out / "inference_depth.json"
        parts = [("comparison", base + ["--skip-full", "--no-fp32-reference", "--json", str(comp_json)],
                  comp_json, 40)]
        if not args.skip_full:
            depth_cmd = base + ["--skip-comparison", "--json", str(depth_json)]
            if not args.tiny:
                depth_cmd += ["--full-depths", "128", "501"]
            parts.append(("depth", depth_cmd, depth_json, 0))
        for name, cmd, jfile, reserve in parts:
            timeout = remaining() - reserve - 10
            step = {"command": " ".join(cmd), "timeout_s": timeout}
            if name == "depth" and timeout < 100:
                say(f"step 2 ({name}): skipped, only {remaining():.0f} s of the budget left")
                step["skipped"] = "time budget"
                report["steps"][f"inference_{name}"] = step
                continue
            say(f"step 2 ({name}): {' '.join(cmd[1:])}; timeout {timeout:.0f} s")
            t = time.perf_counter()
            try:
                jfile.unlink(missing_ok=True)
                code, text = run_subprocess(cmd, logs / f"inference_{name}.log", timeout,
                                            {**child_env, "TQDM_DISABLE": "1"}, echo=True)
                step["returncode"], step["wall_s"] = code, time.perf_counter() - t
                if jfile.is_file():
                    step["result"] = json.loads(jfile.read_text())
                if code != 0:
                    step["error"] = "timed out" if code is None else f"exit code {code}"
                    print(f"    FAILED ({step['error']}); log: {logs / f'inference_{name}.log'}")
                else:
                    say(f"  step 2 ({name}) done in {step['wall_s']:.0f} s")
            except Exception:
                step["error"] = traceback.format_exc()
                print(step["error"])
            report["steps"][f"inference_{name}"] = step
            save()

    # ---- 3. summary
    smi = nvidia_smi()
    report["nvidia_smi_end"] = smi
    print("\n".join(smi.split("\n")[:2]))
    lines = []
    env_info = report.get("environment", {})
    lines.append(f"torch {env_info.get('torch')} (CUDA {env_info.get('torch_cuda')}), device "
                 f"{env_info.get('device_name', args.device)}")
    tr = report["steps"].get("train", {})
    if "result" in tr:
        r = tr["result"]
        lines.append(f"train {r['configuration']} patch {r.get('patch_size')} batch {r['settings']['batch_size']}: "
                     f"{r.get('iterations_per_s_compute', float('nan')):.2f} it/s (train_step), "
                     f"{r.get('iterations_per_s_end_to_end', float('nan')):.2f} it/s end to end"
                     + (f"; GPU max allocated {r['cuda_max_allocated_MiB']:.0f} MiB, reserved "
                        f"{r['cuda_max_reserved_MiB']:.0f} MiB, device used {r['device_used_peak_MiB']:.0f} MiB"
                        if "cuda_max_allocated_MiB" in r else ""))
    elif tr:
        lines.append(f"train: FAILED ({tr.get('error', '?')[:200]})")
    for name in ("comparison", "depth"):
        st = report["steps"].get(f"inference_{name}", {})
        res = st.get("result", {})
        if name == "comparison" and "comparison" in res:
            c = res["comparison"]
            cuda = ""
            if "cuda_max_allocated_MiB" in c["ours"]:
                cuda = (f"; CUDA max allocated ours {c['ours']['cuda_max_allocated_MiB']:.0f} vs "
                        f"{c['nnunet']['cuda_max_allocated_MiB']:.0f} MiB")
            lines.append(f"inference {c['configuration']} {'x'.join(map(str, c['shape']))} TTA {c['tta']}: ours "
                         f"{c['ours']['seconds']:.1f} s vs nnUNetPredictor {c['nnunet']['seconds']:.1f} s "
                         f"({c['time_ratio']:.2f}x throughput); "
                         f"peak extra RSS ours {c['ours']['peak_extra_MiB']:.0f} vs "
                         f"{c['nnunet']['peak_extra_MiB']:.0f} MiB{cuda}; max |diff| {c['max_abs_diff']:.1e}")
        elif name == "depth" and "depth" in res:
            d = res["depth"]
            parts = []
            for x in d["runs"]:
                part = (f"{x['label'].split()[0]} {x['run']} {x['seconds']:.0f} s, RSS +{x['peak_extra_MiB']:.0f} MiB "
                        f"(anon +{x['peak_anon_extra_MiB']:.0f})")
                if "cuda_max_allocated_MiB" in x:
                    part += f", CUDA max allocated {x['cuda_max_allocated_MiB']:.0f} MiB"
                parts.append(part)
            lines.append(f"full-size {d['configuration']} network on {d['group']}: " + ", ".join(parts)
                         + f"; bound {d['runs'][0]['bound_plus_network_MiB']:.0f} MiB")
        elif st:
            lines.append(f"inference {name}: {st.get('skipped') or st.get('error', 'no result')}")
    report["summary"] = lines
    save()
    print("\nSUMMARY\n  " + "\n  ".join(lines) + f"\nresults: {json_file} (total {elapsed():.0f} s)")
    return report


if __name__ == "__main__":
    main()
