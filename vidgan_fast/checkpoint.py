"""Checkpoints: atomic writes, verified and validated reads, RNG state capture.

A checkpoint is one `torch.save`d dict (readable with `weights_only=True`):
    format, version            FORMAT / VERSION, so a foreign file is recognised as such
    phase                      "frames" (phase 1) or "video" (phase 2)
    config                     TrainConfig.to_dict()
    generator                  G_F (phase 1) or G_V (phase 2) state dict
    discriminators             DiscriminatorList state dict ('0.conv1.weight', ...)
    frame_generator            phase 2 only: the G_F state (frozen, or fine-tuned)
    optimizers                 {"generator": ..., "discriminators": ..., "frame_generator": ... or None}
    step, epoch, batch_in_epoch, complete
    rng                        torch CPU, CUDA (if used), numpy and python states
    losses                     {"d_loss": ..., "g_loss": ...} of the last logged step
    integrity                  SHA-256 of every tensor and of the rest (integrity_record); checked on load
    frame_average, selection   phase 1 with --frames-ema / --frames-select-every (selection.py), else None or
                               absent (files written before these options): G_F's weight average, and the
                               snapshot selection's state (best_state: the best G_F, best_step, best_score, history)
"""
from __future__ import annotations

import hashlib
import os
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .config import PHASE_NAMES as PHASES
from .config import TrainConfig
from .errors import CheckpointError, ConfigError
from .files import write_error, write_file

FORMAT = "vidgan_fast.checkpoint"
VERSION = 1
INTEGRITY = "integrity"       # additive: {"algorithm", "tensors", "payload"} (see integrity_record)
REQUIRED = ("phase", "config", "generator", "discriminators", "optimizers", "step", "epoch", "batch_in_epoch",
            "rng")


def umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write payload + format tag + integrity record to `path` atomically (files.write_file: a temporary file in
    the same folder, fsync, rename; a symlink at `path` is replaced, never followed). The file gets the mode of
    any file this user writes (0666 minus the umask).

    If anything fails before the rename, the file already at `path` (if any) is left as it was; an OSError
    (no permission, no space) is a one-line CheckpointError naming `path` and saying what was kept.
    """
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, **payload}
    data[INTEGRITY] = integrity_record(data)
    kept = "the previous checkpoint is unchanged" if path.exists() else "no checkpoint was saved"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path, kept, CheckpointError) from None
    return write_file(path, lambda f: torch.save(data, f), replace=True, kept=kept, error=CheckpointError)


# ----------------------------------------------------------------------------------------------- integrity
# Each tensor's SHA-256 (over its dtype, shape and bytes) and one SHA-256 over everything else (the structure and
# every plain value, with each tensor's place and digest), written with the checkpoint and checked on load before
# any use. Additive: the entry is one more key, which older readers ignore; a checkpoint without it (written before
# it existed) still loads, with a warning, after a check of the zip records' CRC-32.

def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous().reshape(-1)
    h = hashlib.sha256(f"{t.dtype}|{t.numel()}|".encode())
    h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def _walk(obj, where: str, tensors: dict, plain: list) -> None:
    if isinstance(obj, torch.Tensor):
        tensors[where] = f"{_tensor_digest(obj)}:{tuple(obj.shape)}"
        plain.append(f"{where}=<tensor {tensors[where]}>")
    elif isinstance(obj, dict):
        plain.append(f"{where}=dict({len(obj)})")
        for k, v in obj.items():
            _walk(v, f"{where}[{k!r}]" if where else str(k), tensors, plain)
    elif isinstance(obj, (list, tuple)):
        plain.append(f"{where}={type(obj).__name__}({len(obj)})")
        for i, v in enumerate(obj):
            _walk(v, f"{where}[{i}]", tensors, plain)
    else:
        plain.append(f"{where}={obj!r}")


def integrity_record(data: dict) -> dict:
    """{"algorithm": "sha256", "tensors": {place: digest}, "payload": digest} of everything in `data` but itself."""
    tensors, plain = {}, []
    _walk({k: v for k, v in data.items() if k != INTEGRITY}, "", tensors, plain)
    return {"algorithm": "sha256", "tensors": tensors,
            "payload": hashlib.sha256("\n".join(plain).encode()).hexdigest()}


def _record_of(path: Path) -> str:
    """The zip record whose CRC-32 fails, if any ('' when the zip layer is intact)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() or ""
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError):
        return ""


def verify(data: dict, path: Path) -> None:
    """A one-line CheckpointError naming the file and the record if the content is not what was written."""
    record = data.pop(INTEGRITY, None)
    if record is None:
        bad = _record_of(path)
        if bad:
            raise CheckpointError(f"checkpoint {path} is damaged: its record {bad} fails its CRC-32 check (the file "
                                  f"changed after it was written); use another checkpoint")
        warnings.warn(f"checkpoint {path} has no integrity record (written by an older vidgan_fast): its tensors "
                      f"cannot be checked against what was written; saving it again adds one", RuntimeWarning,
                      stacklevel=3)
        return
    if not isinstance(record, dict) or record.get("algorithm") != "sha256":
        raise CheckpointError(f"checkpoint {path} has an integrity record this vidgan_fast cannot read")
    now = integrity_record(data)
    expected = record.get("tensors") or {}
    for where in sorted(set(now["tensors"]) | set(expected)):
        if now["tensors"].get(where) != expected.get(where):
            zip_record = _record_of(path)
            named = f"tensor {where}" + (f" (record {zip_record})" if zip_record else "")
            raise CheckpointError(f"checkpoint {path} is damaged: {named} does not match the SHA-256 written with "
                                  f"it (the file changed after it was written); use another checkpoint")
    if now["payload"] != record.get("payload"):
        raise CheckpointError(f"checkpoint {path} is damaged: its settings or counters (record data.pkl) do not "
                              f"match the SHA-256 written with them; use another checkpoint")


def load_checkpoint(path: str | Path, expected_phase: str | None = None, map_location="cpu") -> dict:
    """Read, verify (integrity record) and validate a checkpoint; every problem is a one-line CheckpointError
    naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load raises many kinds (RuntimeError, UnpicklingError, KeyError...) on bad bytes
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise CheckpointError(f"checkpoint {path} cannot be read: truncated, corrupt or not a torch file "
                              f"({reason[:100]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vidgan_fast checkpoint (no '{FORMAT}' format tag)")
    verify(data, path)
    if data.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {data.get('version')!r}; "
                              f"this vidgan_fast reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} is damaged: it has no {missing[0]!r} entry")
    if data["phase"] not in PHASES:
        raise CheckpointError(f"checkpoint {path} has unknown phase {data['phase']!r}")
    if data["phase"] == "video" and "frame_generator" not in data:
        raise CheckpointError(f"checkpoint {path} is damaged: a video checkpoint without 'frame_generator'")
    if expected_phase is not None and data["phase"] != expected_phase:
        raise CheckpointError(f"checkpoint {path} is a {data['phase']} (phase {PHASES.index(data['phase']) + 1}) "
                              f"checkpoint; expected a {expected_phase} checkpoint")
    return data


def check_matching(module: torch.nn.Module, state: dict, what: str, path: str | Path) -> None:
    """A one-line CheckpointError if `state` does not have exactly the keys and shapes of module's state dict
    (`module` may live on the meta device: only shapes are read)."""
    own = module.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise CheckpointError(f"{what} in {path} does not match the configured model: it has no tensor {name!r}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{what} in {path} does not match the configured widths: {name} has shape "
                                  f"{tuple(state[name].shape)} in the checkpoint, {tuple(tensor.shape)} configured")
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointError(f"{what} in {path} does not match the configured model: unexpected tensor {extra[0]!r}")


def load_matching(module: torch.nn.Module, state: dict, what: str, path: str | Path) -> None:
    """module.load_state_dict(state), but a key or shape mismatch is a one-line CheckpointError."""
    check_matching(module, state, what, path)
    module.load_state_dict(state)


def sampling_frame_generator(ckpt: dict) -> dict:
    """The G_F state a checkpoint samples with: a video checkpoint's G_F; for a frames checkpoint the best
    snapshot (--frames-select-every), else the weight average (--frames-ema), else the last weights."""
    if ckpt["phase"] == "video":
        return ckpt["frame_generator"]
    best = (ckpt.get("selection") or {}).get("best_state")
    if best is not None:
        return best
    return ckpt["frame_average"] if ckpt.get("frame_average") is not None else ckpt["generator"]


def frame_generator_of(path: str | Path, given_widths: tuple | None = None) -> tuple[dict, tuple[int, ...]]:
    """(G_F state, G_F widths) of a phase-1 checkpoint: phase 2 builds its G_F with the widths the checkpoint
    holds, and renders with the G_F it samples with (sampling_frame_generator). `given_widths` (--gf-widths on the
    command line), if not None, must be the same: else ConfigError."""
    ckpt = load_checkpoint(path, expected_phase="frames")
    widths = saved_config(ckpt, path).gf_widths
    if given_widths is not None and tuple(given_widths) != widths:
        shown = lambda w: ",".join(map(str, w))      # noqa: E731
        raise ConfigError(f"invalid --gf-widths {shown(given_widths)}: the frames checkpoint {path} holds a G_F of "
                          f"widths {shown(widths)}; leave --gf-widths out (phase 2 reads them from the checkpoint)")
    return sampling_frame_generator(ckpt), widths


def saved_config(ckpt: dict, path: str | Path) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with; a one-line CheckpointError if it is unusable."""
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} holds an unusable config ({e})") from None


def portable_optimizer_state(state_dict: dict) -> dict:
    """An optimizer state dict that loads on either path: capturable (CUDA-graph) optimizers saved as plain."""
    return {**state_dict, "param_groups": [{**g, "capturable": False} if "capturable" in g else g
                                           for g in state_dict["param_groups"]]}


def rng_states(device: torch.device) -> dict:
    """Every RNG a run draws from, as plain tensors / numbers (so `weights_only=True` can read them back)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, py_state, py_gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
        "cuda": None,
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if device.type == "cuda" and states.get("cuda") is not None:
        torch.cuda.set_rng_state(states["cuda"], device)
