"""From a trial's config to mixed-precision trial configs: the whole pipeline.

FP32 model (the trial cache's), a uniformly prepared and calibrated QAT model (its
structure: layers, quantizers, the IntModel the simulators price), sensitivities,
cost tables, then one configuration per budget. The configs it returns are ordinary
``TrainConfig``s with ``layer_bits`` set: ``run_trial`` trains them like any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from qatlab.config import TrainConfig
from qatlab.data import load_dataset
from qatlab.hw.asic import ArrayConfig
from qatlab.hw.fpga import LayerFolding, analyze
from qatlab.hw.workload import from_intmodel
from qatlab.intmodel import IntModel, convert
from qatlab.nn import calibrate, prepare_qat
from qatlab.train import pretrain_fp32, resolve_device, seed_everything, specs

from .costs import CostTables, FpgaTarget, cost_tables
from .errors import InfeasibleBudgetError
from .search import Budget, MixedConfig, search
from .sensitivity import SensitivityData, SensitivityInput, SensitivityTable, layer_sensitivity
from .space import DecisionSpace, decision_space


@dataclass
class Plan:
    space: DecisionSpace
    tables: CostTables
    sensitivity: SensitivityTable
    reference: IntModel  # the uniform model the tables were priced on
    configs: list[MixedConfig] = field(default_factory=list)
    # strict=False: the budgets no configuration meets, with why (their configs are absent)
    infeasible: list[tuple[Budget, InfeasibleBudgetError]] = field(default_factory=list)


def _batches(ds: Any, n: int, batch: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    idx = torch.randperm(len(ds), generator=gen)[: n * batch]
    out = []
    for i in range(0, len(idx), batch):
        items = [ds[int(j)] for j in idx[i : i + batch]]
        out.append((torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])))
    return out


def plan(
    cfg: TrainConfig,
    budgets: Sequence[Budget],
    method: str = "hessian",
    candidates: Sequence[int] = (2, 4, 8),
    *,
    act_candidates: Sequence[int] | None = None,
    asic: ArrayConfig | None = None,
    fpga: FpgaTarget | None = None,
    options: Mapping[str, Any] | None = None,
    calib_batches: int = 4,
    val_samples: int = 2000,
    use_cache: bool = True,
    strict: bool = True,
) -> Plan:
    """Sensitivities, cost tables and one configuration per budget for ``cfg``'s model.

    ``strict``: a budget nothing meets raises :class:`InfeasibleBudgetError`; without it
    that budget goes to ``Plan.infeasible`` and the other budgets still get their
    configuration (a sweep records the one budget failed and trains the rest).
    """
    device = resolve_device("cpu")
    splits = load_dataset(
        cfg.dataset, val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, limit_test=cfg.limit_test,
        seed=cfg.seed, loader_args=cfg.loader_args,
    )  # fmt: skip
    fp32, _ = pretrain_fp32(cfg, splits, device, use_cache)
    fp32 = fp32.cpu().eval()
    w_spec, a_spec = specs(cfg)
    gen = seed_everything(cfg.seed + 2)
    calib = _batches(splits.train, calib_batches, cfg.batch_size, gen)
    q = prepare_qat(fp32, w_spec, a_spec, cfg.ste, first_last_bits=cfg.first_last_bits)
    calibrate(q, iter([x for x, _ in calib]))
    im = convert(q.eval(), splits.input_shape, cfg.rounding)
    space = decision_space(q, candidates, first_last_bits=cfg.first_last_bits, act_candidates=act_candidates)
    val = _batches(splits.val, 1, min(val_samples, len(splits.val)), gen)[0]
    data = SensitivityData(calib, val)
    sens = layer_sensitivity(
        method, SensitivityInput(fp32, q, space, w_spec, a_spec, cfg.ste, data, dict(options or {}), cfg.seed), use_cache
    )
    tables = cost_tables(im, space, asic, fpga)
    p = Plan(space, tables, sens, im)
    for b in budgets:
        try:
            p.configs.append(search(tables, sens, b))
        except InfeasibleBudgetError as e:
            if strict:
                raise
            p.infeasible.append((b, e))
    return p


def trial_configs(cfg: TrainConfig, configs: Sequence[MixedConfig]) -> list[TrainConfig]:
    """``cfg`` once per configuration, with its ``layer_bits``."""
    return [dataclasses.replace(cfg, layer_bits=c.layer_bits) for c in configs]


def uniform_folding(model: IntModel, fpga: FpgaTarget) -> tuple[dict[str, LayerFolding], float]:
    """The FPGA folding (and clock) :func:`cost_tables` prices a network at: ``fpga``'s
    own, or the one the folding search picks for the network at uniform W8A8.

    For a trained network that had no plan (a uniform trial beside mixed ones), so its
    FPGA figures are taken at the folding its mixed siblings were priced at.
    """
    layers = [dataclasses.replace(lay, w_bits=8, a_bits=8) for lay in from_intmodel(model)]
    if fpga.folding is None:
        rep = analyze(layers, fpga.device, target_fps=fpga.target_fps, schedule=False)
    else:
        rep = analyze(layers, fpga.device, folding=dict(fpga.folding), schedule=False)
    return dict(rep.folding), float(rep.clock_mhz)
