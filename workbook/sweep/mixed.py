"""A spec's ``mixed:`` block inside a sweep: the plan tasks, their stored results, the
trials they add, and what those trials cost on the simulators.

Each plan (``workbook.spec.MixedPlan``: one base config, the block's budgets) is a Ray
task that runs after the FP32 task of its base config and calls ``qatlab.mixed.plan``
(sensitivities are cached per FP32 model by the library). Its result is kept as
``<out>/mixed/<plan_id>.json`` (atomic): a rerun with the same spec reads it instead of
planning again. The driver then submits one ordinary trial per configuration: the base
config with ``layer_bits``, so its trial id is deterministic. A budget without a
configuration (its plan failed, or no configuration meets it) is a trial recorded
``failed`` (``failure: plan``) under an id derived from the plan and the budget.

In a spec with a ``mixed:`` block every ptq/qat trial runs through
:func:`execute_costed_trial`: after training, the simulators price its IntModel
(``cost_<metric>`` columns: the uniform trials and the mixed ones on the same axes,
the ASIC ones on the block's ``asic`` array, the one its plans priced);
a mixed trial also carries what its plan predicted (``predicted_<metric>``), which
must equal what was measured. Nothing here imports torch or Ray at import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from qatlab.atomic import write_text
from workbook.results import ResultStore, jsonable, write_json_atomic
from workbook.spec import MixedPlan, MixedSpec, Trial, array_config, mixed_plan_word
from workbook.sweep.fp32 import install
from workbook.sweep.node import captured, worker_info
from workbook.sweep.records import iso, plan_failure

if TYPE_CHECKING:
    from workbook.spec import Spec

PLAN_DIR = "mixed"
FORMAT = "qatlab.sweep-plan/1"
ORIGIN = "mixed"


@dataclass(frozen=True)
class PlanItem:
    """A plan waiting in the driver's queue beside the trials (it shares their FP32 model)."""

    plan: MixedPlan
    valid: bool = True

    @property
    def trial_id(self) -> str:
        return f"plan-{self.plan.plan_id}"

    @property
    def config(self) -> Mapping[str, Any]:
        return self.plan.base

    @property
    def label(self) -> str:
        return self.plan.label


# ---- the stored plan -------------------------------------------------------------------


def plan_path(store: ResultStore, plan_id: str) -> Path:
    return store.root / PLAN_DIR / f"{plan_id}.json"


def load_plan(store: ResultStore, plan: MixedPlan) -> dict[str, Any] | None:
    """The stored result of ``plan``, or None (none, unreadable, or another plan's: plan again)."""
    try:
        d = json.loads(plan_path(store, plan.plan_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(d, dict) and d.get("format") == FORMAT and d.get("plan_id") == plan.plan_id and d.get("status") in ("ok", "failed")
    return d if ok and isinstance(d.get("budgets"), dict) else None


def save_plan(store: ResultStore, result: Mapping[str, Any]) -> Path:
    """``<plan_id>.json`` (the result) and ``<plan_id>.log`` (its task's log), atomically; the JSON last."""
    path = plan_path(store, str(result["plan_id"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    if result.get("log"):
        write_text(path.with_suffix(".log"), str(result["log"]))
    write_json_atomic(path, {k: v for k, v in result.items() if k != "log"})
    return path


def failed_plan(plan: MixedPlan, error: str) -> dict[str, Any]:
    """A plan whose task returned nothing (a dead worker, a timeout): every budget fails with ``error``."""
    return {"format": FORMAT, "plan_id": plan.plan_id, "base_id": plan.base_id, "status": "failed", "error": error,
            "budgets": {}, "folding": None, "clock_mhz": None, "finished_at": iso(time.time())}  # fmt: skip


# ---- the plan task -------------------------------------------------------------------------


def _folding_json(folding: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: dataclasses.asdict(v) for k, v in folding.items()}


def _folding_of(d: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    from qatlab.hw.fpga import LayerFolding

    return {k: LayerFolding(**v) for k, v in d.items()}


def _fpga_target(fpga: Mapping[str, Any] | None) -> Any:
    if fpga is None:
        return None
    from qatlab.mixed import FpgaTarget

    return FpgaTarget(str(fpga["device"]), target_fps=fpga.get("target_fps"))


def execute_plan(base: Mapping[str, Any], plan_id: str, settings: Mapping[str, Any], meta: Mapping[str, Any],
                 fp32: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Plan on this worker: ``qatlab.mixed.plan`` for ``base`` under ``settings``'s budgets,
    its ASIC figures on ``settings["asic"]``'s array (absent: the default one).

    Never raises: a failing plan is ``status: failed`` with its traceback, a budget no
    configuration meets is that budget's ``error`` (the library's message, naming the
    cheapest cost) while the others get their configuration. ``fp32``: the FP32 task's
    result, installed into this node's cache first (as a trial does).
    """
    import torch

    started = time.time()
    info = worker_info()
    log = io.StringIO()
    out: dict[str, Any] = {"format": FORMAT, "plan_id": plan_id, "base_id": meta.get("base_id"), "status": "failed", "error": None,
                           "budgets": {}, "folding": None, "clock_mhz": None, "asic": settings.get("asic")}  # fmt: skip
    try:
        from qatlab.config import TrainConfig
        from qatlab.mixed import Budget, plan

        torch.set_num_threads(max(1, int(meta.get("num_cpus") or 1)))
        cfg = TrainConfig.from_dict({**dict(base), "device": "cpu"})
        log.write(
            f"{iso(started)} plan {plan_id} ({meta.get('label')}) on node {info['node_ip']} ({info['hostname']}, pid {info['worker_pid']})\n"
        )
        if fp32 is not None and fp32.get("error"):  # the plan starts from that model, as its trials do
            raise RuntimeError(f"FP32 pretraining ({fp32.get('source')}) failed:\n{fp32['error']}")
        if fp32 is not None:
            try:
                log.write(install(fp32, cfg.to_dict()) + "\n")
            except Exception as e:  # the plan still runs: it pretrains (or reads this node's cache) itself
                log.write(f"warning: cannot use the FP32 model ({type(e).__name__}: {e}); pretraining here\n")
        budgets = [Budget(settings["metric"], float(b["value"]), bool(b["relative"])) for b in settings["budgets"]]
        with captured(log):
            acands = settings.get("act_candidates")
            p = plan(cfg, budgets, settings["sensitivity"], tuple(settings["candidates"]), asic=array_config(settings.get("asic")),
                     act_candidates=tuple(acands) if acands is not None else None,
                     fpga=_fpga_target(settings.get("fpga")), options=settings.get("options") or {}, strict=False)  # fmt: skip
        by_budget = {b: spec["name"] for b, spec in zip(budgets, settings["budgets"])}
        for c in p.configs:
            out["budgets"][by_budget[c.budget]] = {
                "layer_bits": c.layer_bits, "predicted": c.predicted, "native": c.native, "sensitivity": c.sensitivity, "error": None,
            }  # fmt: skip
        for b, e in p.infeasible:
            out["budgets"][by_budget[b]] = {"layer_bits": None, "error": f"{type(e).__name__}: {e}"}
        out["folding"] = _folding_json(p.tables.folding) if p.tables.fpga is not None else None
        out["clock_mhz"] = p.tables.clock_mhz
        out["status"] = "ok"
        log.write(f"{iso(time.time())} plan {plan_id}: {len(p.configs)} configurations, {len(p.infeasible)} budgets unmet\n")
    except Exception:
        out["error"] = traceback.format_exc()
        log.write(out["error"])
    out.update(node_ip=info["node_ip"], finished_at=iso(time.time()), task_s=round(time.time() - started, 3), log=log.getvalue())
    return out


# ---- the trials a plan adds -------------------------------------------------------------------


def _mixed_label(mixed: MixedSpec, plan: MixedPlan, names: Sequence[str]) -> str:
    return plan.label.replace(mixed_plan_word(mixed.metric), " ".join(names), 1)


def first_error(text: Any) -> str:
    lines = [ln.strip() for ln in str(text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "the plan failed"


@dataclass(frozen=True)
class MixedInfo:
    """What a mixed trial's record carries beside its config."""

    plan: MixedPlan
    names: tuple[str, ...]
    budget: Any  # MixedBudget of the first name
    entry: Mapping[str, Any] | None  # the plan's configuration (None: it has none)
    folding: Mapping[str, Any] | None
    clock_mhz: float | None


def plan_trials(mixed: MixedSpec, plan: MixedPlan, result: Mapping[str, Any]) -> list[tuple[Trial, MixedInfo]]:
    """One trial per budget (budgets that chose the same bits share one), in budget order."""
    from qatlab.config import TrainConfig

    out: dict[str, tuple[Trial, MixedInfo]] = {}
    for b in mixed.budgets:
        entry = result.get("budgets", {}).get(b.name) if result.get("status") == "ok" else None
        if entry is not None and entry.get("layer_bits"):
            cfg = {**plan.base, "layer_bits": entry["layer_bits"]}
            tid, error = TrainConfig.from_dict(cfg).trial_id, None
        else:
            cfg = dict(plan.base)
            tid = plan.placeholder_id(b)
            why = (entry or {}).get("error") or first_error(result.get("error"))
            error = f"plan {plan.plan_id} has no configuration for {b.name}: {why}"
        if tid in out:  # two budgets chose the same bits: one trial, both names
            t, info = out[tid]
            names = (*info.names, b.name)
            out[tid] = (dataclasses.replace(t, label=_mixed_label(mixed, plan, names)), dataclasses.replace(info, names=names))
            continue
        info = MixedInfo(plan, (b.name,), b, entry, result.get("folding"), result.get("clock_mhz"))
        out[tid] = (Trial(trial_id=tid, config=cfg, origin=ORIGIN, error=error, label=_mixed_label(mixed, plan, (b.name,))), info)
    return list(out.values())


def mixed_fields(info: MixedInfo, metric: str) -> dict[str, Any]:
    """The record's mixed-precision columns (predicted costs in the metrics' units)."""
    b = info.budget
    rec: dict[str, Any] = {
        "mixed": ", ".join(info.names), "mixed_metric": metric, "mixed_budget": b.value, "mixed_relative": b.relative,
        "mixed_plan": info.plan.plan_id, "mixed_base": info.plan.base_id,
    }  # fmt: skip
    predicted = (info.entry or {}).get("predicted") or {}
    for k, v in predicted.items():
        rec[f"predicted_{k}"] = v
    rec["predicted_cost"] = predicted.get(metric)
    rec["mixed_sensitivity"] = (info.entry or {}).get("sensitivity")
    return rec


def spec_trial_ids(spec: "Spec", store: ResultStore) -> list[str]:
    """Every trial id the spec owns in ``store``: its own trials, and those its stored plans
    added (with the ids of budgets that have no configuration), so no rerun calls them foreign."""
    ids = [t.trial_id for t in spec.trials]
    if spec.mixed is None:
        return ids
    for p in spec.mixed.plans:
        ids += [p.placeholder_id(b) for b in spec.mixed.budgets]
        stored = load_plan(store, p)
        if stored is not None:
            ids += [t.trial_id for t, _ in plan_trials(spec.mixed, p, stored)]
    return ids


# ---- costs of a trained trial -----------------------------------------------------------------


def costs_in_units(native: Mapping[str, float], clock_mhz: float | None) -> dict[str, float]:
    """Simulator totals (pJ, cycles, ...) in the metrics' units, computed as the search does."""
    from qatlab.mixed.metrics import METRICS

    out = {}
    for m in METRICS.values():
        if m.table not in native:
            continue
        v = native[m.table]
        if m.kind == "fps":
            if clock_mhz is None:
                continue
            out[m.name] = clock_mhz * 1e6 / v
        else:
            out[m.name] = v / m.scale
    return out


def trial_costs(intmodel: bytes, costing: Mapping[str, Any]) -> dict[str, float]:
    """``cost_<metric>`` of a trained IntModel (its saved bytes) from the simulators.

    ``costing``: ``asic`` (``MixedSpec.asic``: the array's non-default fields, or None
    for the default array), ``fpga`` ({device, target_fps} or None), and for a mixed trial the
    ``folding`` and ``clock_mhz`` its plan priced at; without them (a uniform trial)
    the folding is the one the plan's search picks for this network at W8A8.
    """
    import torch

    from qatlab.intmodel import IntModel
    from qatlab.mixed import simulate_costs
    from qatlab.mixed.plan import uniform_folding

    # The bytes the trial saved: read in memory, no file round trip.
    im = IntModel.from_dict(torch.load(io.BytesIO(intmodel), map_location="cpu", weights_only=True), "intmodel.pt")
    fpga = costing.get("fpga")
    folding, clock = _folding_of(costing.get("folding")), costing.get("clock_mhz")
    if fpga is not None and folding is None:
        folding, clock = uniform_folding(im, _fpga_target(fpga))
    native = simulate_costs(im, array_config(costing.get("asic")), fpga["device"] if fpga is not None else None, folding)
    return {f"cost_{k}": v for k, v in costs_in_units(native, clock).items()}


def cost_basis(meta: Mapping[str, Any]) -> str:
    """A digest of what a trial's costs were priced on (the array, the FPGA target and
    folding, its plan's columns): a stored trial whose basis differs is priced again."""
    # As stored: a plan read back from its JSON file gives the digest its first run gave.
    blob = json.dumps(jsonable({"costing": meta.get("costing") or {}, "mixed": meta.get("mixed") or {}}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _drop_costs(rec: dict[str, Any]) -> None:
    for k in [k for k in rec if k.startswith(("cost_", "predicted_", "mixed")) or k == "actual_cost"]:
        del rec[k]


def price(rec: dict[str, Any], intmodel: bytes | None, meta: Mapping[str, Any]) -> None:
    """Set an ok record's cost columns (``meta["costing"]``), its plan's columns
    (``meta["mixed"]``) and ``cost_basis``, replacing any it had. A pricing error is
    ``cost_error``: the trained trial stays ok."""
    _drop_costs(rec)
    rec.update(meta.get("mixed") or {})
    rec["cost_error"] = None
    rec["cost_basis"] = cost_basis(meta)
    if rec.get("status") != "ok":
        return
    if intmodel is None:
        rec["cost_error"] = f"no integer model to price: {rec.get('int_error') or 'none was saved'}"
    else:
        try:
            rec.update(trial_costs(intmodel, meta.get("costing") or {}))
        except Exception as e:
            rec["cost_error"] = f"{type(e).__name__}: {e}"
    metric = rec.get("mixed_metric")
    if metric:
        rec["actual_cost"] = rec.get(f"cost_{metric}")


def execute_costed_trial(config: Mapping[str, Any], trial_id: str, meta: Mapping[str, Any],
                         fp32: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """``execute_trial``, then its IntModel priced (:func:`price`)."""
    from workbook.sweep.worker import execute_trial

    res = execute_trial(config, trial_id, {**meta, "save_models": True}, fp32)
    price(res["record"], (res.get("artifacts") or {}).get("intmodel.pt"), meta)
    if not meta.get("save_models", True):
        res["artifacts"] = {}
    return res


def reprice(store: ResultStore, trial_id: str, meta: Mapping[str, Any]) -> bool:
    """Price a stored ok trial again when the spec now prices it on another basis (an
    edited ``asic:``/``fpga:`` block, a plan with other predictions), from the integer
    model it saved; its training is not repeated. Returns whether its record changed.
    Without a saved integer model its costs are cleared and ``cost_error`` says why."""
    rec = store.load(trial_id)
    if rec is None or rec.get("status") != "ok" or rec.get("cost_basis") == cost_basis(meta):
        return False
    try:
        data: bytes | None = (store.trial_dir(trial_id) / "intmodel.pt").read_bytes()
    except OSError:
        data = None
    price(rec, data, meta)
    if data is None:
        rec["cost_error"] = "priced on another basis before, and no integer model was saved to price again: rerun it with --force"
    store.save(rec)
    return True


# ---- the driver's view --------------------------------------------------------------------------


class MixedRun:
    """The plans of one sweep run: which run now, which were stored, the trials they add."""

    def __init__(self, spec: "Spec", store: ResultStore, mode: str) -> None:
        self.mixed = spec.mixed
        self.store = store
        self.results: dict[str, dict[str, Any]] = {}  # plan id -> result (stored or new)
        self.info: dict[str, MixedInfo] = {}  # mixed trial id -> its plan's columns
        self.to_run: list[PlanItem] = []
        spec_ids = {t.trial_id for t in spec.trials}
        self.spec_ids = spec_ids
        self.base_of = {tid: p.base_id for p in (self.mixed.plans if self.mixed is not None else ()) for tid in p.derived_from}
        for p in self.mixed.plans if self.mixed is not None else ():
            stored = None if mode == "force" else load_plan(store, p)
            if stored is not None and stored["status"] == "ok":
                self.results[p.plan_id] = stored
            elif stored is not None or mode != "failed":  # --rerun-failed leaves a plan never run alone
                self.to_run.append(PlanItem(p))

    def trials(self, plan: MixedPlan, result: Mapping[str, Any]) -> list[Trial]:
        """The trials of ``plan`` (not those that are the spec's own trials already)."""
        assert self.mixed is not None
        self.results[plan.plan_id] = dict(result)
        out = []
        for t, info in plan_trials(self.mixed, plan, result):
            if t.trial_id in self.spec_ids:
                continue
            self.info[t.trial_id] = info
            out.append(t)
        return out

    def known_trials(self) -> list[Trial]:
        """The trials of the plans stored ok (their plans do not run again)."""
        assert self.mixed is not None or not self.results
        plans = {p.plan_id: p for p in self.mixed.plans} if self.mixed is not None else {}
        return [t for pid, r in list(self.results.items()) for t in self.trials(plans[pid], r)]

    def announce(self, item: PlanItem) -> str:
        assert self.mixed is not None
        return f"plan {item.label} [{item.plan.plan_id}]: {len(self.mixed.budgets)} budgets of {self.mixed.metric}"

    def costed(self, t: Any) -> bool:
        return self.mixed is not None and t.config.get("method") in ("ptq", "qat")

    def meta(self, t: Trial) -> dict[str, Any]:
        """The costed trial's extra meta: how to price it, and its plan's columns."""
        assert self.mixed is not None
        info = self.info.get(t.trial_id)
        costing: dict[str, Any] = {
            "asic": dict(self.mixed.asic) if self.mixed.asic is not None else None,
            "fpga": dict(self.mixed.fpga) if self.mixed.fpga is not None else None,
        }
        if info is None:  # a uniform trial: which plan's frontier it belongs to, if any
            return {"costing": costing, "mixed": {"mixed_base": self.base_of[t.trial_id]} if t.trial_id in self.base_of else {}}
        costing.update(folding=info.folding, clock_mhz=info.clock_mhz)
        return {"costing": costing, "mixed": mixed_fields(info, self.mixed.metric)}

    def reprice(self, trials: Sequence[Trial]) -> list[str]:
        """Price again the stored ok trials whose costs stand on another basis (see
        :func:`reprice`); the ids of those whose records changed."""
        if self.mixed is None:
            return []
        return [t.trial_id for t in trials if self.costed(t) and reprice(self.store, t.trial_id, self.meta(t))]

    def failure(self, t: Trial, sweep: str) -> dict[str, Any]:
        """The record of a budget without a configuration."""
        assert self.mixed is not None
        rec = plan_failure(t, sweep, str(t.error))
        info = self.info.get(t.trial_id)
        if info is not None:
            rec.update(mixed_fields(info, self.mixed.metric))
        return rec


# ---- Ray remote functions (made once per process) ---------------------------------------------

_REMOTES: dict[str, Any] = {}


def remote(name: str) -> Any:
    """``plan`` (execute_plan) or ``costed`` (execute_costed_trial)."""
    import ray

    if not _REMOTES:
        _REMOTES.update(plan=ray.remote(execute_plan), costed=ray.remote(execute_costed_trial))
    return _REMOTES[name]
