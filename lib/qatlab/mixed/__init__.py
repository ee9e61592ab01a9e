"""Hardware-aware mixed precision: per-layer bits under a hardware budget.

Sensitivity per layer and ``(w_bits, a_bits)``, and per activation quantizer that
feeds no layer and ``a_bits`` (``noise``, ``hessian``, ``measured``; cached per FP32
model), per-op cost tables from the simulators (ASIC energy/cycles with sub-8-bit
packing, FPGA resources and per-layer cycles at a folding, weight bytes, BOPs), and
an integer linear program (scipy's HiGHS) that picks the least sensitive
configuration within a budget. ``docs/mixed-precision.md`` describes it.

    from qatlab.mixed import Budget, plan
    p = plan(profile("quick"), [Budget("asic_energy", 0.5, relative=True)])
    p.configs[0].layer_bits        # -> TrainConfig(layer_bits=...)
"""

from .costs import CostTables, FpgaTarget, cost_tables, simulate_costs, with_sensitivity
from .errors import InfeasibleBudgetError, MixedPrecisionError
from .ilp import Solution, cheapest, solve
from .ilp import pareto as pareto_problem
from .metrics import METRICS, Metric, get_metric
from .plan import Plan, plan, trial_configs
from .problem import Factor, Problem, brute_force
from .search import Budget, MixedConfig, cheapest_reachable, pareto, search
from .sensitivity import SensitivityData, SensitivityInput, SensitivityTable, layer_sensitivity, methods, register
from .space import ActSlot, DecisionSpace, Knob, LayerSlot, decision_space

__all__ = [
    "METRICS", "ActSlot", "Budget", "CostTables", "DecisionSpace", "Factor", "FpgaTarget", "InfeasibleBudgetError", "Knob",
    "LayerSlot", "Metric", "MixedConfig", "MixedPrecisionError", "Plan", "Problem", "SensitivityData",
    "SensitivityInput", "SensitivityTable", "Solution", "brute_force", "cheapest", "cheapest_reachable",
    "cost_tables", "decision_space", "get_metric", "layer_sensitivity", "methods", "pareto", "pareto_problem",
    "plan", "register", "search", "simulate_costs", "solve", "trial_configs", "with_sensitivity",
]  # fmt: skip
