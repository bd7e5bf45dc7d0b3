"""The per-launch cost projections that measurements are read against: files written by
`vidgan bench --static --json FILE` (vidgan_fast/lab/report.py, lab/cost.py), found, loaded and looked up here and
never computed here (a projection compiles every kernel and traces their addresses: minutes at paper size).

    data = load("benchmarks/projections/paper-h100-tf32.json")
    steps = steps_for(data, "h100", "tf32")          # {"phase 1 D step": {...as_dict(StepCost)...}, ...}
    found = resolve("auto", "NVIDIA H100 80GB HBM3", "tf32", "paper")     # what a run on that GPU reads

Committed projections live in benchmarks/projections/, one file per preset, GPU and precision, named
`<preset>-<gpu>-<precision>.json` (gpu: a key of lab/hardware.GPUS); a file holding several GPUs or precisions
(`--gpu h100 h200 --precision tf32 bf16`) is found too. Torch-free (the report imports it before torch).
"""
from __future__ import annotations

import json
from pathlib import Path

PROJECTIONS = Path(__file__).resolve().parent / "projections"
STEP_NAMES = ("phase 1 D step", "phase 1 G step", "phase 2 D step", "phase 2 G step")    # lab/cost.STEP_NAMES


def load(path) -> dict:
    """A `vidgan bench --static --json` file; ValueError (one line) if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not all(
            isinstance(s, dict) and {"step", "gpu", "precision", "projected_s", "floor_s"} <= s.keys()
            for s in data["steps"]):
        raise ValueError(f"{path}: not a `vidgan bench --static --json` file (a 'steps' list of projected steps)")
    return data


def steps_for(data: dict, gpu: str, precision: str) -> dict[str, dict]:
    """{step name: projected step} of `gpu` (a lab/hardware.GPUS key) at `precision` in a loaded file."""
    return {s["step"]: s for s in data["steps"] if s["gpu"] == gpu and s["precision"] == precision}


def find(gpu: str, precision: str, preset: str = "paper", folder=None) -> Path | None:
    """The committed projection of `preset` on `gpu` at `precision`: <preset>-<gpu>-<precision>.json first, then
    any other file of `folder` (default PROJECTIONS) that holds those steps; None when there is none."""
    folder = Path(PROJECTIONS if folder is None else folder)
    named = folder / f"{preset}-{gpu}-{precision}.json"
    others = sorted(p for p in folder.glob("*.json") if p != named) if folder.is_dir() else []
    for path in ([named] if named.exists() else []) + others:
        try:
            data = load(path)
        except (OSError, ValueError):
            continue
        if data.get("preset") == preset and steps_for(data, gpu, precision):
            return path
    return None


def resolve(spec, device_name: str, precision: str, preset: str) -> dict:
    """What a run of `preset` at `precision` on the device named `device_name` reads from the projection `spec`
    (a file, or 'auto': found in PROJECTIONS). Returns {"file", "gpu", "precision", "preset", "command", "steps":
    {step name: projected step}} or, where nothing applies, {"file", "unavailable": why (one line)}. A file that
    does not exist or is not a projection raises ValueError (a wrong argument, not a missing projection)."""
    from vidgan_fast.lab.hardware import gpu_for_name
    gpu = gpu_for_name(device_name)
    if spec == "auto":
        if gpu is None:
            return {"file": None, "unavailable": f"{device_name} is not a GPU of vidgan_fast/lab/hardware.py"}
        path = find(gpu.key, precision, preset)
        if path is None:
            return {"file": None, "unavailable": f"no projection of preset {preset} on {gpu.key} at {precision} in "
                                                 f"{PROJECTIONS} (`vidgan bench --static --json` writes one)"}
    else:
        path = Path(spec)
        if not path.exists():
            raise ValueError(f"projection file {path} does not exist")
    data = load(path)
    out = {"file": str(path), "preset": data.get("preset"), "command": data.get("command")}
    if gpu is None:
        return {**out, "unavailable": f"{device_name} is not a GPU of vidgan_fast/lab/hardware.py"}
    if data.get("preset") != preset:
        return {**out, "unavailable": f"{path.name} projects preset {data.get('preset')}, this run is {preset}"}
    steps = steps_for(data, gpu.key, precision)
    if not steps:
        held = sorted({f"{s['gpu']} {s['precision']}" for s in data["steps"]})
        return {**out, "unavailable": f"{path.name} has no {gpu.key} steps at {precision} (it has: "
                                      f"{', '.join(held) or 'none'})"}
    return {**out, "gpu": gpu.key, "precision": precision, "steps": steps}


def step_name(row_name: str) -> str | None:
    """The projection's name of a report step row ('phase1 D step (K=48, B=64)' -> 'phase 1 D step')."""
    head = row_name.split(" step")[0].split()
    if len(head) == 2 and head[0] in ("phase1", "phase2") and head[1] in ("D", "G"):
        return f"phase {head[0][-1]} {head[1]} step"
    return None
