"""The v2 network of a plans dict, and the device it runs on: what training and inference both build on."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch

CONFIGURATION = "3d_fullres"  # the one v2 configuration this project converts, plans, trains and predicts with


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks the GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_network(plans: Mapping, configuration: str = CONFIGURATION, num_input_channels: int = 1,
                  num_outputs: int = 2, deep_supervision: bool = True, allow_init: bool = True) -> torch.nn.Module:
    """The v2 network of a plans dict, through nnunetv2's own `get_network_from_plans`."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(copy.deepcopy(dict(plans))).get_configuration(configuration)
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, num_input_channels, num_outputs,
                                  allow_init=allow_init, deep_supervision=deep_supervision)


def weights_mismatch(expected: Mapping[str, Sequence[int]], found: Mapping[str, object]) -> str:
    """How the `found` tensors differ, key by key, from the `expected` shapes: how many are missing, unexpected or of
    another shape, each with an example; '' when they fit."""
    shapes = {k: tuple(v.shape) for k, v in found.items() if hasattr(v, "shape")}
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = [f"{k} {shapes[k]} (plans: {tuple(s)})" for k, s in expected.items() if k in shapes and shapes[k] != tuple(s)]
    return ", ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
                     ((missing, "missing"), (extra, "unexpected"), (wrong, "of another shape")) if keys)
