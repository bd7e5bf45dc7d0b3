"""Training on several processes with torch.distributed (torchrun): the generator replicated, the K
discriminators sharded.

    torchrun --nproc_per_node 4 -m vidgan_fast train all --preset paper --device cuda --frames-k 192

Every rank draws the same real batch and the same noise (same seeds), so the generator's forward is the same
everywhere. Rank r owns a contiguous block of the K discriminators (K=5 on 2 ranks: 0-2 and 3-4) and trains
them on their own losses, exactly as one process would. ShardedDiscriminators all-gathers the [K_r, B] logits
of every block into the [K, B] logits of all K, so the unchanged step.d_step / g_step compute the one-process
losses (mean, sum, hypervolume, gman) on every rank. Its backward keeps only this rank's rows, so each rank's
generator gradient is the part that flows through its own discriminators; the generator optimizers all-reduce
(SUM) those parts before stepping (a step pre-hook), which gives the one-process gradient up to the order of
the sums. Every rank then takes the same step.

Discriminators are built exactly as on one process: every rank builds all K (so the RNG draws, weights and
projections match discriminator k of a one-process run) and then drops the ones it does not own. The price is
a transient peak of all K per rank at start-up: at paper widths 42 MB per frame discriminator (192: 8 GB) and
134 MB per video discriminator, plus, on --resume, the full checkpoint (weights and RMSprop state) in host memory.
The hooks in train.py and execution.py (prepare, rank_path, stop_requests, agree_stop, save_checkpoint, is_main) do nothing on one
process.
Checkpoints are gathered to rank 0 in the one-process layout ('0.'..'K-1.', reference optimizer state), so a
file written by N processes resumes on one process and the other way round. Only rank 0 writes files.

CPU tensors go through gloo, CUDA tensors through NCCL ("cpu:gloo,cuda:nccl"); each process uses the GPU
cuda:LOCAL_RANK. When one rank fails it tears the group down, so the others stop with a one-line error instead
of waiting in a collective. SIGINT/SIGTERM: the ranks agree (an all-reduce each step) to stop after the same
step, save and exit.
"""
from __future__ import annotations

import contextlib
import io
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from .checkpoint import portable_optimizer_state
from .checkpoint import save_checkpoint as save_checkpoint_file
from .errors import ConfigError, TrainingError, VidganError
from .signals import stop_requests as one_process_stop_requests
from .models import DiscriminatorList

REPEAT_WINDOW_S = 2.0     # a repeated signal within this window is the same request (torchrun forwards Ctrl-C)


# ----------------------------------------------------------------------------------------------- the group

def launch_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or None for a one-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the only one that writes logs, samples and checkpoints (always True on one process)."""
    return rank() == 0


def rank_path(path):
    """`path` on rank 0; os.devnull on the other ranks (which write nothing)."""
    return path if is_main() else type(path)(os.devnull)


def init(rank: int, world: int, local_rank: int) -> None:
    """Join the group from torchrun's env:// variables: gloo for CPU tensors, NCCL for CUDA tensors."""
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        if local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)


def _one_line(e: BaseException) -> str:
    """The first line of an error, without gloo's '[.../pair.cc:553] ' source location."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line.split(". ")[0][:160]


@contextlib.contextmanager
def launched():
    """The CLI's train commands run inside this. Under torchrun (WORLD_SIZE > 1): join the group, keep stdout
    quiet on ranks > 0, and on any error tear the group down at once (so no rank hangs in a collective) and
    report a one-line VidganError (prefixed 'rank r:' on ranks > 0). On one process: nothing."""
    env = launch_env()
    if env is None or active():
        yield
        return
    r, world, local_rank = env
    try:
        init(r, world, local_rank)
    except (dist.DistError, RuntimeError, ValueError, KeyError) as e:
        raise TrainingError(f"rank {r}: cannot join the torchrun process group ({_one_line(e)})") from None
    prefix = f"rank {r}: " if r else ""
    try:
        with contextlib.redirect_stdout(io.StringIO()) if r else contextlib.nullcontext():
            yield
    except VidganError as e:
        teardown()
        raise e.prefixed(prefix) from None
    except torch.OutOfMemoryError as e:
        teardown()
        raise TrainingError(f"{prefix}out of memory ({_one_line(e)})") from None
    except (dist.DistError, RuntimeError) as e:
        teardown()
        if not isinstance(e, dist.DistError) and "gloo" not in str(e).lower() and "connection" not in str(e).lower():
            raise
        raise TrainingError(f"{prefix}stopped: another process of the group failed ({_one_line(e)})") from None
    except BaseException:
        teardown()
        raise
    teardown()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- sharding

def shard_ranges(k: int, world: int) -> list[range]:
    """Contiguous blocks of range(k), one per rank; the first k % world ranks get one more."""
    if k < world:
        raise ConfigError(f"invalid K {k}: {world} processes need at least {world} discriminators (one each); "
                          f"raise --frames-k / --video-k or use fewer processes")
    base, extra = divmod(k, world)
    starts = [r * base + min(r, extra) for r in range(world + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(world)]


class GatherShards(torch.autograd.Function):
    """[K_r, B] logits of this rank -> [K, B] logits of all ranks; the backward keeps this rank's rows."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, shards: list, rank: int) -> torch.Tensor:
        ctx.rows = shards[rank]
        width = max(len(s) for s in shards)
        padded = local.new_zeros(width, *local.shape[1:])
        padded[:len(ctx.rows)] = local
        parts = [torch.empty_like(padded) for _ in shards]
        dist.all_gather(parts, padded)
        return torch.cat([part[:len(s)] for part, s in zip(parts, shards)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.rows.start:ctx.rows.stop], None, None


class ShardedDiscriminators(nn.Module):
    """This rank's block of the K discriminators (`local`: a DiscriminatorList or a fast bank) as a module
    giving the logits [K, B] of all K; parameters() and state_dict() are the local block's."""

    def __init__(self, local: nn.Module, shards: list[range], rank: int):
        super().__init__()
        self.local, self.shards, self.rank = local, shards, rank

    @property
    def rows(self) -> range:
        return self.shards[self.rank]

    @property
    def k(self) -> int:
        return self.shards[-1].stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GatherShards.apply(self.local(x), self.shards, self.rank)

    # The checkpoint layout of the local block (save_checkpoint gathers every rank's into the one-process file).

    def reference_state_dict(self) -> dict:
        return self.local.reference_state_dict()

    def reference_optimizer_state(self, optimizer_state: dict) -> dict:
        return self.local.reference_optimizer_state(optimizer_state)


def reference_layout(discriminators: nn.Module, d_opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(weights, optimizer state) in the DiscriminatorList layout, for a list or a fast bank."""
    return (discriminators.reference_state_dict(),
            discriminators.reference_optimizer_state(portable_optimizer_state(d_opt.state_dict())))


def _slice_optimizer_state(sd: dict, rows: range, per_disc: int) -> dict:
    """The reference-layout optimizer state of discriminators `rows`, renumbered from 0."""
    group = sd["param_groups"][0]
    first, last = rows.start * per_disc, rows.stop * per_disc
    state = {i - first: s for i, s in sd["state"].items() if first <= i < last}
    return {"state": state, "param_groups": [{**group, "params": list(range(last - first))}]}


def shard_state(state) -> None:
    """Keep this rank's block of state.discriminators (and of d_opt's state), wrapped so that it still gives
    the logits of all K; make the generator optimizers sum their gradients over the ranks. In place."""
    if isinstance(state.discriminators, ShardedDiscriminators):
        return
    if state.device.type == "cuda" and state.device.index is not None and world_size() > 1:
        raise ConfigError(f"invalid --device {state.device}: under torchrun each process uses the GPU "
                          f"cuda:LOCAL_RANK; pass --device cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", rank()))
    if state.device.type == "cuda" and local_rank >= torch.cuda.device_count():
        raise ConfigError(f"process {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                          f"use --nproc_per_node {torch.cuda.device_count()} or fewer")
    full, d_opt = state.discriminators, state.d_opt
    weights, opt_state = reference_layout(full, d_opt)
    k = full.k
    shards = shard_ranges(k, world_size())
    rows = shards[rank()]
    per_disc = len(opt_state["param_groups"][0]["params"]) // k
    local_opt_state = _slice_optimizer_state(opt_state, rows, per_disc)
    if not isinstance(full, DiscriminatorList):         # a fast bank (--fast)
        from .fast.interchange import optimizer_state_from_reference
        refs = full.to_reference()
        with torch.random.fork_rng(devices=[state.device] if state.device.type == "cuda" else []):
            local = type(full).from_reference(refs[rows.start:rows.stop],
                                              precision=full.precision).to(state.device)   # its init draws
        local.train(full.training)
        local_opt_state = optimizer_state_from_reference(local, local_opt_state)
    else:
        local = DiscriminatorList(list(full)[rows.start:rows.stop])
    del weights, full
    copies = {"copies": local.stored_copy_of()} if hasattr(local, "stored_copy_of") else {}   # a bank's bf16 copies
    state.d_opt = type(d_opt)(local.parameters(), lr=d_opt.param_groups[0]["lr"], **copies)
    state.d_opt.load_state_dict(local_opt_state)        # restores every hyperparameter and the local state
    if hasattr(local, "fuse_optimizer"):                # a bank steps its conv weights in its backward
        local.fuse_optimizer(state.d_opt)
    state.discriminators = ShardedDiscriminators(local, shards, rank())
    for opt in (state.g_opt, state.f_opt):
        if opt is not None:
            opt.register_step_pre_hook(sum_gradients)


def sum_gradients(optimizer: torch.optim.Optimizer, args=(), kwargs=None) -> None:
    """Optimizer step pre-hook: replace each gradient by its sum over the ranks (one flat all-reduce)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def prepare(state) -> None:
    """train_phase's hook: shard the state under torchrun; nothing on one process."""
    if active():
        shard_state(state)


# ----------------------------------------------------------------------------------------------- checkpoints

def gather_payload(state, payload: dict) -> dict | None:
    """Collective: the one-process checkpoint payload on rank 0 (None elsewhere), with every rank's
    discriminators and their optimizer state re-keyed to global indices '0.'..'K-1.'."""
    sharded: ShardedDiscriminators = state.discriminators
    weights, opt_state = reference_layout(sharded.local, state.d_opt)
    rows, k_local = sharded.rows, len(sharded.rows)
    per_disc = len(opt_state["param_groups"][0]["params"]) // k_local
    first = rows.start * per_disc
    mine = {
        "weights": {f"{rows.start + int(key.split('.', 1)[0])}.{key.split('.', 1)[1]}": v.detach().cpu()
                    for key, v in weights.items()},
        "state": {first + i: {name: (v.detach().cpu() if torch.is_tensor(v) else v) for name, v in s.items()}
                  for i, s in opt_state["state"].items()},
    }
    parts = [None] * world_size() if is_main() else None
    dist.gather_object(mine, parts, dst=0)
    if not is_main():
        return None
    group = opt_state["param_groups"][0]
    weights, states = {}, {}
    for part in parts:
        weights.update(part["weights"])
        states.update(part["state"])
    out = dict(payload)
    out["discriminators"] = weights
    out["optimizers"] = {**payload["optimizers"], "discriminators": {
        "state": dict(sorted(states.items())),
        "param_groups": [{**group, "params": list(range(sharded.k * per_disc))}]}}
    return out


def save_checkpoint(state, path, payload: dict) -> None:
    """train_phase's save: one process writes `payload`; under torchrun every rank calls this, rank 0 writes
    the gathered one-process checkpoint, and all wait until the file is in place."""
    if not active():
        save_checkpoint_file(path, payload)
        return
    full = gather_payload(state, payload)
    if full is not None:
        save_checkpoint_file(path, full)
    dist.barrier()


# ----------------------------------------------------------------------------------------------- stopping

def stop_requests():
    """signals.stop_requests. Under torchrun the same signal may arrive twice at once (the terminal's Ctrl-C and
    torchrun forwarding it), so only a repeat after REPEAT_WINDOW_S stops at once."""
    return one_process_stop_requests(REPEAT_WINDOW_S if active() else 0.0)


def agree_stop(stop: list[int]) -> None:
    """Collective (under torchrun; nothing on one process): if any rank caught a signal, every rank's `stop`
    holds one after this call, so all stop after the same step."""
    if not active():
        return
    flag = torch.tensor([stop[0] if stop else 0], dtype=torch.int64)      # a CPU tensor: gloo, no GPU sync
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and not stop:
        stop.append(int(flag.item()))
