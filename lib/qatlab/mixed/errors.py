"""The errors of mixed-precision search: one family, each naming what is wrong."""

from __future__ import annotations


class MixedPrecisionError(ValueError):
    """Bad input to the search: an unknown metric or method, bad candidates, a bad pin."""


class InfeasibleBudgetError(MixedPrecisionError):
    """No configuration meets the budget; ``cheapest`` is the best value any reaches."""

    def __init__(self, metric: str, budget: float, cheapest: float, unit: str = "") -> None:
        self.metric = metric
        self.budget = budget
        self.cheapest = cheapest
        self.unit = unit
        super().__init__(self._message())

    def _message(self) -> str:
        u = f" {self.unit}" if self.unit else ""
        if self.metric == "fpga_fps":
            return f"budget fpga_fps >= {self.budget:.6g}{u} is unreachable: the fastest configuration reaches {self.cheapest:.6g}{u}"
        return f"budget {self.metric} <= {self.budget:.6g}{u} is unreachable: the cheapest configuration needs {self.cheapest:.6g}{u}"

    def __reduce__(self) -> tuple:
        return (type(self), (self.metric, self.budget, self.cheapest, self.unit))
