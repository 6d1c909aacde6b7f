"""Which parameters a stage trains; everything else is frozen and must stay bit-identical."""

from __future__ import annotations

from torch import nn

from dpr_dist.training.config import MODULE_GROUPS


def module_groups(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The model's named module groups (``experts`` may hold several submodules)."""
    groups: dict[str, list[nn.Module]] = {}
    for name in MODULE_GROUPS:
        module = getattr(model, name, None)
        if module is not None:
            groups[name] = [module]
    return groups


def apply_freeze(model: nn.Module, trained: list[str]) -> None:
    unknown = sorted(set(trained) - set(MODULE_GROUPS))
    if unknown:
        raise ValueError(f"stage.train names unknown module group(s) {unknown}; allowed: {list(MODULE_GROUPS)}")
    groups = module_groups(model)
    for name, modules in groups.items():
        for module in modules:
            for p in module.parameters():
                if p.is_leaf:  # a TorchRec table's parameters are views of its fused kernel's weights
                    p.requires_grad_(name in trained)
    # A frozen table is read through a detached weight: a fused (TorchRec) table updates inside
    # backward whatever requires_grad says, so detaching is what keeps it bit-identical.
    model.item_table.frozen = "item_table" not in trained


def named_trainable_dense(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every trained parameter outside the item table, in model order."""
    table = {id(p) for p in model.item_table.parameters()}
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in table]
