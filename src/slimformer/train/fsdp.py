"""Fully sharded data-parallel training for the one trainer (PyTorch FSDP2, `fully_shard`).

Under `torchrun` / `accelerate launch` with more than one process, `TrainConfig.distributed="fsdp"`
(or `"auto"` under an accelerate config whose `distributed_type` is FSDP) shards the trained
module's parameters, gradients and optimizer state over the processes: each Transformer layer (a
member of a ModuleList) is one unit, the rest of the module the root unit; a unit's full
parameters exist only while it runs. The module is sharded in place, so the loss closure that
calls it (the trainer never wraps it) runs the sharded one; after training `release()` puts full,
plain parameters back on every process, so the rest of the pipeline (saving, evaluation) sees an
ordinary module. Checkpoints hold the full state (gathered to rank 0) and load on any number of
processes. CPU (gloo) and CUDA (nccl) alike.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

ACCELERATE_FSDP_ENV = "ACCELERATE_USE_FSDP"  # set by `accelerate launch` for an FSDP config file or --use_fsdp


def wants_fsdp(setting: str) -> bool:
    """"fsdp" -> True, "ddp" -> False, "auto" -> whether accelerate was launched with FSDP."""
    if setting == "auto":
        return os.environ.get(ACCELERATE_FSDP_ENV, "").lower() in ("1", "true", "yes")
    return setting == "fsdp"


@contextlib.contextmanager
def accelerate_without_fsdp():
    """Build accelerate's Accelerator as for DDP even under an FSDP launch: the trainer shards the
    module itself (accelerate's own FSDP plugin wraps prepared models, which the trainer never
    gives it, and refuses to start on CPU)."""
    old = os.environ.get(ACCELERATE_FSDP_ENV)
    if old is not None:
        os.environ[ACCELERATE_FSDP_ENV] = "false"
    try:
        yield
    finally:
        if old is not None:
            os.environ[ACCELERATE_FSDP_ENV] = old


def _runs(m: nn.Module) -> bool:
    """Whether the module has a forward of its own (containers such as ModuleDict do not)."""
    return type(m).forward is not nn.Module.forward


def _trainable(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters())


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one, children before parents (fully_shard goes bottom-up): the
    members of every ModuleList that hold trainable parameters (Transformer layers), then the module
    itself, or, for a container without a forward of its own (the student with its loss
    projections), its outermost children that have one."""
    units: list[nn.Module] = []
    for m in reversed(list(module.modules())):
        if isinstance(m, nn.ModuleList) and len(m) > 1:
            units += [c for c in m if _runs(c) and _trainable(c) and c not in units]
    roots, todo = [], [module]
    while todo:
        m = todo.pop(0)
        if _runs(m):
            roots.append(m)
        else:
            todo += [c for c in m.children() if _trainable(c)]
    return units + [r for r in roots if r not in units and _trainable(r)]


class Sharded:
    """`module` sharded in place over the default process group (see the module doc)."""

    def __init__(self, module: nn.Module, device: torch.device):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.module = module
        mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
        self.units = shard_units(module)
        for u in self.units:
            fully_shard(u, mesh=mesh)
        covered = {id(p) for u in self.units for p in u.parameters()}
        # trainable parameters outside every unit stay whole on each process: the trainer averages their gradients
        self.replicated = [p for p in module.parameters() if p.requires_grad and id(p) not in covered]

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def full_state_dict(self) -> dict:
        """The module's full state on rank 0 ({} elsewhere); every process must call it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.module, options=self._options(cpu_offload=True))

    def optimizer_state_dict(self, optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, optimizer, options=self._options(cpu_offload=True))

    def load(self, model_state: dict, optimizer=None, optimizer_state: dict | None = None) -> None:
        """Load full states read on rank 0 (others pass {}) into the shards of every process."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(self.module, model_state, options=self._options(broadcast_from_rank0=True))
        if optimizer is not None:
            set_optimizer_state_dict(self.module, optimizer, optimizer_state or {},
                                     options=self._options(broadcast_from_rank0=True))

    def release(self) -> None:
        """Full, plain parameters back on every process; the module is an ordinary one again (its
        own class, no FSDP hooks or state)."""
        import importlib

        from torch.distributed import _composable_state
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        from torch.distributed.fsdp import FSDPModule, fully_shard

        _contract = importlib.import_module("torch.distributed._composable.contract")  # the module, not the function
        full = get_model_state_dict(self.module, options=self._options())  # every process: full tensors
        for u in self.units:
            st = fully_shard.state(u)
            for h in {st._pre_forward_hook_handle, st._post_forward_hook_handle}:
                h.remove()
            u.__class__ = next(b for b in type(u).__bases__ if b is not FSDPModule)
            _composable_state._module_state_mapping.pop(u, None)
            u.__dict__.pop(_contract.STATE_KEY, None)
            u.__dict__.pop(_contract.REGISTRY_KEY, None)
        owners: dict[int, list[tuple[nn.Module, str, str]]] = {}  # a tied parameter has several owners
        for mod_name, mod in self.module.named_modules(remove_duplicate=False):
            for pname, p in mod._parameters.items():
                if p is not None:
                    owners.setdefault(id(p), []).append((mod, pname, f"{mod_name}.{pname}" if mod_name else pname))
        for found in owners.values():
            mod, pname, _ = found[0]
            key = next((fqn for _, _, fqn in found if fqn in full), None)
            if key is None:
                raise RuntimeError(f"FSDP release: no full tensor for {found[0][2]}")
            new = nn.Parameter(full[key].detach().clone(), requires_grad=mod._parameters[pname].requires_grad)
            for m, n, _ in found:
                m._parameters[n] = new
        leftover = [n for n, p in self.module.named_parameters() if type(p) is not nn.Parameter]
        if leftover:
            raise RuntimeError(f"FSDP release left sharded parameters: {', '.join(leftover[:3])}")
