"""Checkpoint interchange between the fast path (a discriminator bank, stacked [K, ...] parameters) and the
reference path (models.DiscriminatorList of K modules).

Checkpoints are always written in the reference layout, so a fast run resumes on the reference path and back.
Model weights convert with bank.reference_state_dict() / load_reference_state_dict(); this module converts the
optimizer state the same way: every torch.optim optimizer keeps elementwise per-parameter state, so the state of
bank parameter `conv1_weight` [K, ...] is the K states of the reference parameters `k.conv1.weight`, stacked.
"""
from __future__ import annotations

import copy

import torch


def _single_group(state_dict: dict, what: str) -> dict:
    if len(state_dict["param_groups"]) != 1:
        raise ValueError(f"{what}: expected one parameter group, got {len(state_dict['param_groups'])}")
    return state_dict["param_groups"][0]


def optimizer_state_to_reference(bank, state_dict: dict) -> dict:
    """An optimizer state dict over bank.parameters() -> the same over DiscriminatorList(refs).parameters()."""
    group = _single_group(state_dict, "optimizer_state_to_reference")
    per_layer = len(bank.stacked_parameter_names())
    out_state = {}
    for j, index in enumerate(group["params"]):
        for k in range(bank.k):
            s = state_dict["state"].get(index)
            if s is not None:
                out_state[k * per_layer + j] = {
                    key: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else copy.deepcopy(v))
                    for key, v in s.items()}
    out_group = {**group, "params": list(range(bank.k * per_layer))}
    return {"state": out_state, "param_groups": [out_group]}


def optimizer_state_from_reference(bank, state_dict: dict) -> dict:
    """The inverse of optimizer_state_to_reference (per-parameter scalars such as `step` are taken from k=0)."""
    group = _single_group(state_dict, "optimizer_state_from_reference")
    per_layer = len(bank.stacked_parameter_names())
    if len(group["params"]) != bank.k * per_layer:
        raise ValueError(f"optimizer state holds {len(group['params'])} parameters, a bank of K={bank.k} "
                         f"discriminators has {bank.k * per_layer}")
    index = group["params"]
    params = list(bank.parameters())
    out_state = {}
    for j in range(per_layer):
        states = [state_dict["state"].get(index[k * per_layer + j]) for k in range(bank.k)]
        if all(s is None for s in states):
            continue
        if any(s is None for s in states):
            raise ValueError(f"optimizer state: {bank.stacked_parameter_names()[j][1]} has state for some "
                             f"discriminators only")
        out_state[j] = {key: (_stacked([s[key] for s in states], params[j]) if torch.is_tensor(v) and v.dim() > 0
                              else copy.deepcopy(v)) for key, v in states[0].items()}
    out_group = {**group, "params": list(range(per_layer))}
    return {"state": out_state, "param_groups": [out_group]}


def _stacked(tensors: list, param: torch.Tensor) -> torch.Tensor:
    """The K per-discriminator tensors stacked in the bank parameter's own layout (its weights are channels last):
    the fused RMSprop updates a parameter and its state as one dense layout, and torch's load_state_dict keeps the
    strides it is given (a plain stack of reference-layout state is contiguous and was refused at the first step)."""
    out = torch.empty_like(param, dtype=tensors[0].dtype, device=tensors[0].device)
    return out.copy_(torch.stack(tensors))
