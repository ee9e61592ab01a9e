"""A spec's ``mixed:`` block: parsing (every mistake a SpecError at FILE:LINE:COL), the
plans it expands to, the trials a plan adds, resume, the costs in results.parquet,
and the report page.

The Ray end-to-end test runs LeNet on digits (1 epoch, 400 images): seconds per trial.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qatlab.config import TrainConfig
from workbook.results import ResultStore
from workbook.spec import SpecError, load_spec
from workbook.sweep import mixed as ms
from workbook.sweep.flight import PLAN, TRIAL, Flight

HEAD = (
    "name: m\ndataset: digits\ntrain: {epochs: 1, qat_epochs: 1, batch_size: 64, calib_batches: 2, limit_train: 400}\n"
    "grid: {method: [qat], bits: [8, 4, 2]}\ninclude: [{method: fp32}]\n"
)


def _spec(tmp_path: Path, mixed: str, head: str = HEAD):
    p = tmp_path / "spec.yaml"
    p.write_text(head + mixed)
    return load_spec(p), p


def _error(tmp_path: Path, mixed: str, head: str = HEAD) -> str:
    with pytest.raises(SpecError) as e:
        _spec(tmp_path, mixed, head)
    return str(e.value)


# ---- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "line", "col", "key", "words"),
    [
        ("mixed:\n  metric: joules\n  budgets: [0.5]\n", 7, 3, "mixed.metric", "unknown metric 'joules'; expected one of asic_energy, asic_cycles"),
        ("mixed:\n  metric: asic_energy\n  budgets: [0.5]\n  colour: red\n", 9, 3, "mixed.colour", "unknown key; valid keys: metric"),
        ("mixed:\n  budgets: [0.5]\n", 6, 1, "mixed", "'metric' is required"),
        ("mixed:\n  metric: bops\n  budgets: []\n", 8, 3, "mixed.budgets", "non-empty list"),
        ("mixed:\n  metric: bops\n  budgets: [0.5, 3]\n", 8, 18, "mixed.budgets[1]", "write {value: 3} for an absolute budget in BOP"),
        ("mixed:\n  metric: bops\n  budgets: [0.5, {value: -2}]\n", 8, 18, "mixed.budgets[1]", "must be > 0, got -2"),
        ("mixed:\n  metric: bops\n  budgets: [0.5, {watts: 2}]\n", 8, 18, "mixed.budgets[1]", "{value: X}"),
        ("mixed:\n  metric: bops\n  budgets: [0.5, 0.5]\n", 8, 18, "mixed.budgets[1]", "mixed-bops-0.5 is given twice"),
        ("mixed:\n  metric: bops\n  budgets: [0.5, x]\n", 8, 18, "mixed.budgets[1]", "expected a number"),
        ("mixed:\n  metric: bops\n  budgets: [0.5]\n  sensitivity: vibes\n", 9, 3, "mixed.sensitivity",
         "unknown sensitivity method 'vibes'; expected one of "),
        ("mixed:\n  metric: bops\n  budgets: [0.5]\n  sensitivity: noise\n  options: {depth: 3}\n", 10, 13, "mixed.options.depth",
         "not an option of sensitivity 'noise'"),
        ("mixed:\n  metric: bops\n  budgets: [0.5]\n  candidates: [2, 9]\n", 9, 3, "mixed.candidates", "distinct bit widths in 2..8"),
        ("mixed:\n  metric: bops\n  budgets: [0.5]\n  candidates: [2, 4]\n", 9, 3, "mixed.candidates", "must include 8"),
        ("mixed:\n  metric: bops\n  budgets: [0.5]\n  act_candidates: [2, 9]\n", 9, 3, "mixed.act_candidates", "act_candidates must be distinct"),
        ("mixed:\n  metric: bops\n  budgets: [0.5]\n  act_candidates: [2, 4]\n", 9, 3, "mixed.act_candidates", "act_candidates must include 8"),
        ("mixed:\n  metric: bops\n  budgets: [0.5]\n  act_candidates: 4\n", 9, 3, "mixed.act_candidates", "expected a list"),
        ("mixed:\n  metric: fpga_lut\n  budgets: [0.5]\n  fpga: {device: Abacus}\n", 9, 10, "mixed.fpga.device",
         "unknown FPGA device 'Abacus'; known devices: "),
        ("mixed:\n  metric: fpga_lut\n  budgets: [0.5]\n  fpga: {device: ZCU104, target_fps: 0}\n", 9, 26, "mixed.fpga.target_fps", "> 0"),
    ],
)  # fmt: skip
def test_mistakes_name_file_line_column_and_key(tmp_path, block, line, col, key, words) -> None:
    msg = _error(tmp_path, block)
    assert msg.startswith(f"{tmp_path / 'spec.yaml'}:{line}:{col}: {key}: "), msg
    assert words in msg, msg


def test_act_candidates_are_read_and_plan_apart_without_moving_other_plans(tmp_path) -> None:
    block = "mixed:\n  metric: asic_energy\n  budgets: [0.5]\n"
    plain, _ = _spec(tmp_path, block)
    acts, _ = _spec(tmp_path, block + "  act_candidates: [8, 4]\n")
    assert plain.mixed.act_candidates is None and "act_candidates" not in plain.mixed.settings()
    assert acts.mixed.act_candidates == (4, 8) and acts.mixed.settings()["act_candidates"] == [4, 8]
    assert {p.plan_id for p in plain.mixed.plans}.isdisjoint(p.plan_id for p in acts.mixed.plans)


def test_unknown_metric_lists_the_registry() -> None:
    from qatlab.mixed import METRICS

    with pytest.raises(SpecError) as e:
        from workbook.spec import spec_from_dict

        spec_from_dict({"name": "x", "dataset": "digits", "grid": {"method": ["qat"]}, "mixed": {"metric": "x", "budgets": [0.5]}})
    assert all(m in str(e.value) for m in METRICS)
    with pytest.raises(SpecError) as e:
        spec_from_dict({"name": "x", "dataset": "digits", "grid": {"method": ["qat"]},
                        "mixed": {"metric": "bops", "budgets": [0.5], "sensitivity": "x"}})  # fmt: skip
    assert all(m in str(e.value) for m in ("hessian", "measured", "noise"))  # the registry's, plus any registered since


def test_a_spec_without_qat_trials_has_nothing_to_plan_from(tmp_path) -> None:
    head = "name: m\ndataset: digits\ninclude: [{method: fp32}, {method: ptq, bits: 4}]\n"
    msg = _error(tmp_path, "mixed: {metric: bops, budgets: [0.5]}\n", head)
    assert re.match(rf"{re.escape(str(tmp_path / 'spec.yaml'))}:4:1: mixed: plans derive from the spec's qat trials", msg), msg


def test_budgets_read_as_the_library_reads_them(tmp_path) -> None:
    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3, 1, {value: 5.5}, {relative: 0.7}]}\n")
    b = spec.mixed.budgets
    assert [(x.value, x.relative, x.name) for x in b] == [
        (0.3, True, "mixed-asic_energy-0.3"), (1.0, True, "mixed-asic_energy-1"), (5.5, False, "mixed-asic_energy-5.5uJ"),
        (0.7, True, "mixed-asic_energy-0.7"),
    ]  # fmt: skip
    assert spec.mixed.sensitivity == "hessian" and spec.mixed.candidates == (2, 4, 8) and spec.mixed.fpga is None
    # a frame rate's bare number is a multiple of W8A8's: above 1 is what one asks for
    fps, _ = _spec(tmp_path, "mixed: {metric: fpga_fps, budgets: [2]}\n")
    assert fps.mixed.budgets[0].relative and fps.mixed.fpga == {"device": "ZCU104", "target_fps": None}


# ---- the array a plan prices: mixed.asic ----------------------------------------------------------

ASIC_HEAD = "mixed:\n  metric: asic_energy\n  budgets: [0.5]\n  sensitivity: noise\n  asic:\n"  # its keys at line 11, column 5


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ("rows: 0", "rows", "field 'rows' must be a positive integer, got 0"),
        ("cols: 8.5", "cols", "expected an integer, got 8.5"),
        ("filter_sram_kb: '64'", "filter_sram_kb", "expected an integer, got '64'"),
        ("vdd: 50", "vdd", "must be between 0.1 and 10, got 50.0"),
        ("freq_mhz: .inf", "freq_mhz", "expected a finite number"),
        ("node_nm: small", "node_nm", "expected a number, got 'small'"),
        ("dataflow: xs", "dataflow", "must be one of os, ws, is; got 'xs'"),
        ("bandwidth_mode: calc", "bandwidth_mode", "must be CALC or USER, got 'calc'"),
        ("bandwidth: [4, 0]", "bandwidth", "must be positive integers"),
        ("sparsity: 1", "sparsity", "expected true or false, got 1"),
        ("dram_model: 3", "dram_model", "expected a string, got 3"),
        ("vector_lanes: -1", "vector_lanes", "must be 0 (one per array column) or a positive integer"),
        ("colour: red", "colour", "unknown key; valid keys: rows, cols, "),
        ("pack: 2", "pack", "packs sub-8-bit operands itself"),
        ("ofmap_offset: 0", "ofmap_offset", "unknown key"),
    ],
)  # fmt: skip
def test_asic_mistakes_name_file_line_column_and_key(tmp_path, entry, key, words) -> None:
    msg = _error(tmp_path, ASIC_HEAD + "    ifmap_sram_kb: 32\n    " + entry + "\n")
    assert msg.startswith(f"{tmp_path / 'spec.yaml'}:12:5: mixed.asic.{key}: "), msg
    assert words in msg, msg


def test_asic_must_be_a_mapping(tmp_path) -> None:
    msg = _error(tmp_path, ASIC_HEAD.replace("asic:\n", "asic: [8, 8]\n"))
    assert msg.startswith(f"{tmp_path / 'spec.yaml'}:10:3: mixed.asic: expected a mapping, got list"), msg


def test_every_array_field_is_a_knob_or_left_out_for_a_reason() -> None:
    import dataclasses

    from qatlab.hw.asic import ArrayConfig
    from workbook.spec import MIXED_ASIC_FIXED, MIXED_ASIC_IGNORED, MIXED_ASIC_KEYS

    groups = (set(MIXED_ASIC_KEYS), set(MIXED_ASIC_FIXED), set(MIXED_ASIC_IGNORED))
    assert set.union(*groups) == {f.name for f in dataclasses.fields(ArrayConfig)}
    assert sum(map(len, groups)) == len(set.union(*groups))  # disjoint


def _plan_ids(tmp_path: Path, asic: str) -> list[str]:
    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.5], sensitivity: noise" + asic + "}\n")
    return [p.plan_id for p in spec.mixed.plans]


def test_asic_keeps_the_fields_that_differ_and_each_array_plans_apart(tmp_path) -> None:
    from qatlab.hw.asic import ArrayConfig
    from workbook.spec import array_config

    spec, _ = _spec(tmp_path, ASIC_HEAD + "    rows: 8\n    cols: 8\n    freq_mhz: 500\n    bandwidth: 4\n    dataflow: os\n")
    assert spec.mixed.asic == {"bandwidth": [4], "cols": 8, "freq_mhz": 500.0, "rows": 8}  # os is the default: left out
    assert array_config(spec.mixed.asic) == ArrayConfig(rows=8, cols=8, freq_mhz=500.0, bandwidth=(4,))
    assert spec.mixed.settings()["asic"] == spec.mixed.asic and array_config(None) is None

    default = _plan_ids(tmp_path, "")
    assert "asic" not in _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.5], sensitivity: noise}\n")[0].mixed.settings()
    # the default array, however it is written, is the default array: one plan
    assert _plan_ids(tmp_path, ", asic: {}") == _plan_ids(tmp_path, ", asic: {rows: 32, vdd: 0.9}") == default
    small = _plan_ids(tmp_path, ", asic: {rows: 8, cols: 8}")
    assert small != default and small == _plan_ids(tmp_path, ", asic: {cols: 8, rows: 8.0e+0}".replace("8.0e+0", "8"))
    assert _plan_ids(tmp_path, ", asic: {rows: 8, cols: 8, node_nm: 22}") not in (small, default)
    assert _plan_ids(tmp_path, ", asic: {freq_mhz: 500}") == _plan_ids(tmp_path, ", asic: {freq_mhz: 500.0}") != default

    # a plan file of another array is not this plan's
    (p8,) = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.5], sensitivity: noise, asic: {rows: 8, cols: 8}}\n")[0].mixed.plans
    (p32,) = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.5], sensitivity: noise}\n")[0].mixed.plans
    store = ResultStore(tmp_path / "out")
    ms.save_plan(store, _result(p32, {"mixed-asic_energy-0.5": {"layer_bits": LB_A, "predicted": {}, "error": None}}))
    assert ms.load_plan(store, p32) is not None and ms.load_plan(store, p8) is None


def test_an_fpga_metric_still_prices_its_asic_columns_on_the_array(tmp_path) -> None:
    spec, _ = _spec(tmp_path, "mixed: {metric: fpga_lut, budgets: [0.5], sensitivity: noise, asic: {rows: 16, cols: 4}}\n")
    assert spec.mixed.asic == {"cols": 4, "rows": 16} and spec.mixed.fpga == {"device": "ZCU104", "target_fps": None}
    run = ms.MixedRun(spec, ResultStore(tmp_path / "out"), "resume")
    uniform = next(t for t in spec.trials if t.config["method"] == "qat")
    assert run.meta(uniform)["costing"] == {"asic": {"cols": 4, "rows": 16}, "fpga": {"device": "ZCU104", "target_fps": None}}


_ASIC_VALUES = {
    "rows": st.integers(1, 64), "cols": st.integers(1, 64), "ifmap_sram_kb": st.integers(1, 256),
    "dataflow": st.sampled_from(["os", "ws", "is"]), "bandwidth": st.lists(st.integers(1, 32), min_size=1, max_size=3),
    "freq_mhz": st.one_of(st.integers(1, 4000), st.floats(1.0, 4000.0)), "sparsity": st.booleans(),
    "node_nm": st.sampled_from([7, 22.0, 45, 45.0, 90]), "vdd": st.floats(0.5, 1.5), "vector_lanes": st.integers(0, 64),
}  # fmt: skip


@given(st.fixed_dictionaries({}, optional=_ASIC_VALUES), st.fixed_dictionaries({}, optional=_ASIC_VALUES))
def test_asic_round_trips_and_plan_ids_follow_the_array(a, b) -> None:
    from qatlab.hw.asic import ArrayConfig
    from workbook.spec import array_config, spec_from_dict

    def spec(asic):
        return spec_from_dict({"name": "m", "dataset": "digits", "grid": {"method": ["qat"]},
                               "mixed": {"metric": "asic_cycles", "budgets": [0.5], "sensitivity": "noise", "asic": asic}})  # fmt: skip

    def array(asic):  # the plain reading: ArrayConfig built from the mapping as written
        return ArrayConfig(
            **{k: tuple(v) if isinstance(v, list) else float(v) if k in ("freq_mhz", "node_nm") else v for k, v in asic.items()}
        )

    sa, sb = spec(a), spec(b)
    assert (array_config(sa.mixed.asic) or ArrayConfig()) == array(a)
    assert json.loads(json.dumps(sa.mixed.settings())) == sa.mixed.settings()
    assert (sa.mixed.plans[0].plan_id == sb.mixed.plans[0].plan_id) == (array(a) == array(b))


def test_trials_are_priced_on_the_blocks_array(tmp_path) -> None:
    """The search's prediction on an 8x8 array equals what the sweep's pricing of the
    IntModel built with the chosen bits reports, and differs from the default array's."""
    import io

    import torch

    from qatlab.hw.asic import ArrayConfig
    from qatlab.intmodel import convert
    from qatlab.mixed import (
        Budget,
        SensitivityData,
        SensitivityInput,
        cost_tables,
        decision_space,
        layer_sensitivity,
        search,
        simulate_costs,
    )
    from qatlab.models import build_model
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.quant import QuantSpec
    from workbook.spec import array_config

    spec, _ = _spec(tmp_path, ASIC_HEAD + "    rows: 8\n    cols: 8\n")
    (p,) = spec.mixed.plans
    torch.manual_seed(0)
    model = build_model("lenet").eval()
    w, a = QuantSpec(bits=8, symmetric=True, granularity="channel", axis=0), QuantSpec(bits=8, symmetric=False)
    calib = [torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))]

    def converted(layer_bits=None):
        q = prepare_qat(model, w, a, "lsq", layer_bits=layer_bits)
        calibrate(q, iter(calib))
        return q, convert(q.eval(), (1, 28, 28))

    q, im = converted()
    space = decision_space(q, (4, 8))  # two widths: the noise scores are most of this test's time
    tables = cost_tables(im, space, array_config(spec.mixed.asic))
    g = torch.Generator().manual_seed(2)
    data = SensitivityData([(calib[0], torch.randint(0, 10, (16,), generator=g))],
                           (torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)))  # fmt: skip
    sens = layer_sensitivity("noise", SensitivityInput(model, q, space, w, a, "lsq", data), use_cache=False)
    chosen = search(tables, sens, Budget("asic_energy", 0.8, relative=True))
    assert any(bits != [8, 8] for bits in chosen.layer_bits.values())
    entry = {"layer_bits": chosen.layer_bits, "predicted": chosen.predicted, "native": chosen.native, "sensitivity": 0.0, "error": None}
    run = ms.MixedRun(spec, ResultStore(tmp_path / "out"), "resume")
    (t,) = run.trials(p, _result(p, {"mixed-asic_energy-0.5": entry}))
    costing = run.meta(t)["costing"]
    assert costing["asic"] == {"cols": 8, "rows": 8}

    _, trained = converted(chosen.layer_bits)
    buf = io.BytesIO()
    torch.save(trained.to_dict(), buf)
    got = ms.trial_costs(buf.getvalue(), costing)
    assert got["cost_asic_energy"] == chosen.predicted["asic_energy"] and got["cost_asic_cycles"] == chosen.predicted["asic_cycles"]
    small = simulate_costs(trained, ArrayConfig(rows=8, cols=8))
    assert got["cost_asic_energy"] == small["asic_energy_pj"] / 1e6  # the plain simulator call on the same array
    default = ms.trial_costs(buf.getvalue(), {**costing, "asic": None})
    assert default["cost_asic_energy"] == simulate_costs(trained)["asic_energy_pj"] / 1e6
    assert default["cost_asic_energy"] != got["cost_asic_energy"] and default["cost_asic_cycles"] < got["cost_asic_cycles"]
    assert default["cost_bops"] == got["cost_bops"]  # the array changes the array's figures only


# ---- expansion -------------------------------------------------------------------------------


def test_one_plan_per_base_config_bits_aside(tmp_path) -> None:
    head = (
        HEAD.replace("bits: [8, 4, 2]", "bits: [8, 4, 2], seed: [0, 1]")
        + "  - {method: ptq, bits: 4}\n  - {method: qat, bits: 4, layer_bits: {'0': [8, 8]}}\n"
    )
    head = head.replace("include: [{method: fp32}]\n", "include:\n  - {method: fp32}\n")
    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3, 0.5], sensitivity: noise}\n", head)
    plans = spec.mixed.plans
    assert len(plans) == 2  # seeds 0 and 1; ptq and the hand-made layer_bits trial are no base
    by_id = {t.trial_id: t for t in spec.trials}
    for p in plans:
        assert len(p.derived_from) == 3
        assert sorted(by_id[t].config["w_bits"] for t in p.derived_from) == [2, 4, 8]
        assert {by_id[t].config["seed"] for t in p.derived_from} == {p.base["seed"]}
        assert p.base["w_bits"] == p.base["a_bits"] == 8 and p.base["layer_bits"] == {}
        assert p.base_id == TrainConfig.from_dict(p.base).trial_id
        # labelled like its trials (with the keys that vary across the spec), bits replaced
        assert p.label == f"qat plan asic_energy lsq channel seed={p.base['seed']} layer_bits={{}}"
    assert len({p.plan_id for p in plans}) == 2
    # deterministic, and every plan setting is part of the id
    again, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3, 0.5], sensitivity: noise}\n", head)
    assert [p.plan_id for p in again.mixed.plans] == [p.plan_id for p in plans]
    other, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3, 0.6], sensitivity: noise}\n", head)
    assert not {p.plan_id for p in other.mixed.plans} & {p.plan_id for p in plans}
    ids = [p.placeholder_id(b) for p in plans for b in spec.mixed.budgets]
    assert len(set(ids)) == 4 and not set(ids) & set(by_id)


def _result(plan, budgets: dict, status: str = "ok", error: str | None = None) -> dict:
    return {"format": ms.FORMAT, "plan_id": plan.plan_id, "status": status, "error": error, "budgets": budgets,
            "folding": None, "clock_mhz": None}  # fmt: skip


LB_A = {"0": [8, 8], "4": [2, 4], "9": [2, 2], "11": [4, 8]}
LB_B = {"0": [8, 8], "4": [4, 4], "9": [4, 4], "11": [8, 8]}


def test_a_plan_adds_one_trial_per_configuration(tmp_path) -> None:
    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3, 0.5, 0.7, 0.01], sensitivity: noise}\n")
    (p,) = spec.mixed.plans
    entry = {"predicted": {"asic_energy": 4.5, "bops": 10.0}, "native": {}, "sensitivity": 0.25, "error": None}
    res = _result(p, {
        "mixed-asic_energy-0.3": {**entry, "layer_bits": LB_A}, "mixed-asic_energy-0.5": {**entry, "layer_bits": LB_B},
        "mixed-asic_energy-0.7": {**entry, "layer_bits": LB_B},
        "mixed-asic_energy-0.01": {"layer_bits": None, "error": "InfeasibleBudgetError: budget asic_energy <= 0.15 uJ is unreachable: "
                                   "the cheapest configuration needs 4.57 uJ"},
    })  # fmt: skip
    trials = ms.plan_trials(spec.mixed, p, res)
    assert len(trials) == 3  # 0.5 and 0.7 chose the same bits: one trial, both names
    (ta, ia), (tb, ib), (tc, ic) = trials
    assert ta.trial_id == TrainConfig.from_dict({**p.base, "layer_bits": LB_A}).trial_id and ta.valid
    assert ta.config["layer_bits"] == LB_A and ta.config["w_bits"] == 8 and ta.origin == "mixed"
    assert ta.label == "qat mixed-asic_energy-0.3 lsq channel seed=0"
    assert ib.names == ("mixed-asic_energy-0.5", "mixed-asic_energy-0.7") and "0.5 mixed-asic_energy-0.7" in tb.label
    assert not tc.valid and tc.trial_id == p.placeholder_id(spec.mixed.budgets[3])
    assert "the cheapest configuration needs 4.57 uJ" in tc.error
    f = ms.mixed_fields(ia, "asic_energy")
    assert f["predicted_cost"] == 4.5 and f["predicted_bops"] == 10.0 and f["mixed"] == "mixed-asic_energy-0.3"
    assert f["mixed_plan"] == p.plan_id and f["mixed_base"] == p.base_id and f["mixed_relative"] is True
    # the same plan result gives the same trials: ids are deterministic
    assert [t.trial_id for t, _ in ms.plan_trials(spec.mixed, p, res)] == [t.trial_id for t, _ in trials]


def test_a_failed_plan_fails_every_budget_with_its_error(tmp_path) -> None:
    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3, 0.5]}\n")
    (p,) = spec.mixed.plans
    trials = ms.plan_trials(spec.mixed, p, ms.failed_plan(p, "Traceback ...\nRuntimeError: the node died"))
    assert [t.trial_id for t, _ in trials] == [p.placeholder_id(b) for b in spec.mixed.budgets]
    assert all(not t.valid and t.error.endswith("RuntimeError: the node died") for t, _ in trials)
    run = ms.MixedRun(spec, ResultStore(tmp_path / "out"), "resume")
    (t, _), _ = trials
    run.trials(p, ms.failed_plan(p, "RuntimeError: the node died"))
    rec = run.failure(t, "m")
    assert rec["status"] == "failed" and rec["failure"] == "plan" and rec["attempts"] == 0
    assert rec["mixed"] == "mixed-asic_energy-0.3" and "the node died" in rec["error"] and rec["trial_id"] == t.trial_id


def test_stored_plans_resume_and_own_their_trials(tmp_path) -> None:
    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3, 0.01]}\n")
    (p,) = spec.mixed.plans
    store = ResultStore(tmp_path / "out")
    assert [i.plan for i in ms.MixedRun(spec, store, "resume").to_run] == [p]
    assert ms.MixedRun(spec, store, "failed").to_run == []  # a plan never run is left alone by --rerun-failed
    ok = _result(p, {"mixed-asic_energy-0.3": {"layer_bits": LB_A, "predicted": {}, "error": None},
                     "mixed-asic_energy-0.01": {"layer_bits": None, "error": "unreachable"}})  # fmt: skip
    path = ms.save_plan(store, {**ok, "log": "planned\n"})
    assert path == store.root / "mixed" / f"{p.plan_id}.json" and path.with_suffix(".log").read_text() == "planned\n"
    assert "log" not in json.loads(path.read_text()) and not list(store.root.rglob("*.tmp"))
    run = ms.MixedRun(spec, store, "resume")
    assert run.to_run == [] and [t.valid for t in run.known_trials()] == [True, False]
    assert [i.plan for i in ms.MixedRun(spec, store, "force").to_run] == [p]
    owned = ms.spec_trial_ids(spec, store)
    assert {t.trial_id for t in run.known_trials()} <= set(owned) and {t.trial_id for t in spec.trials} <= set(owned)
    # a failed plan is planned again on resume; a damaged or foreign file is ignored
    ms.save_plan(store, ms.failed_plan(p, "boom"))
    assert [i.plan for i in ms.MixedRun(spec, store, "resume").to_run] == [p]
    path.write_text("{not json")
    assert ms.load_plan(store, p) is None
    path.write_text(json.dumps({**ok, "plan_id": "0" * 16}))
    assert ms.load_plan(store, p) is None


def test_foreign_check_leaves_the_plans_trials_alone(tmp_path) -> None:
    from workbook.sweep.driver import ForeignResultsError, check_foreign

    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3]}\n")
    (p,) = spec.mixed.plans
    store = ResultStore(tmp_path / "out")
    ms.save_plan(store, _result(p, {"mixed-asic_energy-0.3": {"layer_bits": LB_A, "predicted": {}, "error": None}}))
    tid = TrainConfig.from_dict({**p.base, "layer_bits": LB_A}).trial_id
    for t in (tid, p.placeholder_id(spec.mixed.budgets[0])):
        store.save({"trial_id": t, "status": "ok"})
    assert check_foreign(spec, store, replace=False) is None
    store.save({"trial_id": "f" * 16, "status": "ok"})
    with pytest.raises(ForeignResultsError):
        check_foreign(spec, store, replace=False)


def test_flight_plan_jobs_wait_for_their_fp32_source() -> None:
    f = Flight()
    f.add("src", "fp32", "k", None, 0.0, runnable=True, source=True)
    f.add("plan", PLAN, "k", None, 0.0, runnable=False)
    f.add("t", TRIAL, "k", "t1", 0.0, runnable=False)
    f.fp32_done("k", 1.0)
    assert f.jobs["plan"].runnable_since == 1.0 == f.jobs["t"].runnable_since
    assert f.counts()["queued"] + f.counts()["running"] == 1  # a plan is not counted as a trial
    with pytest.raises(ValueError, match="takes no trial id"):
        f.add("p2", PLAN, "k", "x", 0.0, runnable=True)


def test_costs_in_units_match_the_search() -> None:
    from qatlab.mixed.metrics import METRICS

    native = {"asic_energy_pj": 4.5e6, "asic_cycles": 100.0, "fpga_cycles": 2000.0, "weight_bytes": 10.0, "bops": 7.0, "fpga_lut": 3.0}
    got = ms.costs_in_units(native, 200.0)
    assert got["asic_energy"] == 4.5 and got["fpga_fps"] == 200.0 * 1e6 / 2000.0 and got["fpga_lut"] == 3.0
    assert "fpga_fps" not in ms.costs_in_units(native, None) and set(got) <= set(METRICS)


def test_a_plan_that_raises_is_a_failed_result_not_a_crash(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.3]}\n")
    (p,) = spec.mixed.plans
    res = ms.execute_plan({**p.base, "limit_train": 0}, p.plan_id, spec.mixed.settings(), {"label": p.label})
    assert res["status"] == "failed" and "limit_train must be a positive integer" in res["error"] and res["budgets"] == {}
    assert res["plan_id"] == p.plan_id and "Traceback" in res["log"]
    # a failed FP32 task fails the plan with its error, as it fails the trials that start from it
    res = ms.execute_plan(p.base, p.plan_id, spec.mixed.settings(), {"label": p.label}, {"error": "OOM in epoch 1", "source": "task x"})
    assert res["status"] == "failed" and "FP32 pretraining (task x) failed:\nOOM in epoch 1" in res["error"]


# ---- a plan, a trained configuration, its costs (no Ray) ------------------------------------------


@pytest.mark.slow  # trains LeNet on digits and prices it: ~15 s
def test_predicted_cost_equals_the_trained_models_cost(tmp_path, monkeypatch) -> None:
    from qatlab.mixed import FpgaTarget
    from qatlab.mixed.plan import plan, uniform_folding
    from qatlab.mixed.search import Budget

    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    spec, _ = _spec(tmp_path, "mixed: {metric: fpga_lut, budgets: [0.4, 0.01], sensitivity: noise, fpga: {device: ZCU104}}\n")
    (p,) = spec.mixed.plans
    res = ms.execute_plan(p.base, p.plan_id, spec.mixed.settings(), {"label": p.label, "num_cpus": 1})
    assert res["status"] == "ok", res["error"]
    assert "the cheapest configuration needs" in res["budgets"]["mixed-fpga_lut-0.01"]["error"]
    run = ms.MixedRun(spec, ResultStore(tmp_path / "out"), "resume")
    (t, _), *_ = [(t, None) for t in run.trials(p, res) if t.valid]
    out = ms.execute_costed_trial(dict(t.config), t.trial_id, {"label": t.label, "num_cpus": 1, "save_models": False, **run.meta(t)})
    rec = out["record"]
    assert rec["status"] == "ok", rec["error"]
    assert out["artifacts"] == {} and rec["cost_error"] is None  # priced, then not kept (save_models: false)
    predicted = res["budgets"]["mixed-fpga_lut-0.4"]["predicted"]
    for metric, v in predicted.items():
        assert rec[f"cost_{metric}"] == v == rec[f"predicted_{metric}"], metric
    assert rec["actual_cost"] == rec["predicted_cost"] == predicted["fpga_lut"]
    # a uniform trial is priced at the folding its plan's tables used
    cfg = TrainConfig.from_dict(p.base)
    ref = plan(cfg, [Budget("fpga_lut", 1.0, relative=True)], "noise", fpga=FpgaTarget("ZCU104"))
    assert uniform_folding(ref.reference, FpgaTarget("ZCU104"))[0] == dict(ref.tables.folding)


@pytest.mark.slow  # trains LeNet on digits and prices it: ~15 s
def test_a_plan_on_a_small_array_predicts_what_its_trial_costs_there(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    spec, _ = _spec(tmp_path, "mixed: {metric: asic_energy, budgets: [0.6], sensitivity: noise, asic: {rows: 8, cols: 8}}\n")
    (p,) = spec.mixed.plans
    res = ms.execute_plan(p.base, p.plan_id, spec.mixed.settings(), {"label": p.label, "num_cpus": 1})
    assert res["status"] == "ok", res["error"]
    assert res["asic"] == {"cols": 8, "rows": 8}  # the plan file says which array it priced
    run = ms.MixedRun(spec, ResultStore(tmp_path / "out"), "resume")
    (t,) = run.trials(p, res)
    out = ms.execute_costed_trial(dict(t.config), t.trial_id, {"label": t.label, "num_cpus": 1, "save_models": True, **run.meta(t)})
    rec = out["record"]
    assert rec["status"] == "ok" and rec["cost_error"] is None, rec["error"]
    predicted = res["budgets"]["mixed-asic_energy-0.6"]["predicted"]
    for metric, v in predicted.items():
        assert rec[f"cost_{metric}"] == v == rec[f"predicted_{metric}"], metric
    assert rec["actual_cost"] == rec["predicted_cost"] == predicted["asic_energy"]
    # the same trained model on the default array costs something else
    default = ms.trial_costs(out["artifacts"]["intmodel.pt"], {"asic": None, "fpga": None})
    assert default["cost_asic_energy"] != rec["cost_asic_energy"] and default["cost_asic_cycles"] < rec["cost_asic_cycles"]


# ---- the sweep on Ray, resume, the report page ---------------------------------------------------


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray")
    import os
    import tempfile

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("QATLAB_CACHE", str(cache))
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.setenv("RAY_agent_register_timeout_ms", "120000")
    tmp = tempfile.mkdtemp(prefix="qlm", dir="/tmp")
    os.makedirs(os.path.join(tmp, "t"))
    mp.setenv("TMPDIR", os.path.join(tmp, "t"))
    kw = dict(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
              _temp_dir=tmp, logging_level="warning")  # fmt: skip
    try:
        ray.init(**kw)
    except Exception:
        ray.shutdown()
        ray.init(**kw)
    try:
        yield ray
    finally:
        import shutil

        ray.shutdown()
        mp.undo()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow  # Ray, 7 tiny trials and a plan, then the mixed notebook
def test_sweep_plans_trains_resumes_and_reports(ray_local, tmp_path, capsys) -> None:
    from workbook.cli import main
    from workbook.notebooks import execute
    from workbook.report import has_mixed
    from workbook.studies import mixed as mx

    _, spec_path = _spec(
        tmp_path, "mixed: {metric: asic_energy, budgets: [0.3, 0.5, 0.01], sensitivity: noise}\nresources: {num_cpus: 1}\n"
    )
    out = tmp_path / "out"
    assert main(["sweep", str(spec_path), "--out", str(out), "--no-progress"]) == 1  # the unreachable budget fails
    text = capsys.readouterr()
    assert "7 trials: 6 ok, 1 failed (ran 7 now, 0 were done)" in text.out
    assert "the cheapest configuration needs" in text.out
    df = pd.read_parquet(out / "results.parquet")
    mixed = df[df.origin == "mixed"].set_index("mixed")
    assert len(mixed) == 3 and mixed.loc["mixed-asic_energy-0.01", "failure"] == "plan"
    ok = mixed[mixed.status == "ok"]
    assert len(ok) == 2 and (ok.predicted_cost == ok.actual_cost).all() and (ok.actual_cost == ok.cost_asic_energy).all()
    assert ok.layer_bits.map(lambda d: {k: list(v) for k, v in d.items() if v is not None} != {}).all()
    uniform = df[(df.origin == "grid")]
    assert uniform.cost_asic_energy.notna().all() and uniform.mixed_base.nunique() == 1
    assert (ok.mixed_base == uniform.mixed_base.iloc[0]).all()
    store = ResultStore(out)
    plan_file = next((out / "mixed").glob("*.json"))
    mtimes = {t: store.result_path(t).stat().st_mtime_ns for t in df[df.status == "ok"].trial_id}
    plan_mtime = plan_file.stat().st_mtime_ns

    # again: the plan is read, not redone; the finished trials do not run again
    assert main(["sweep", str(spec_path), "--out", str(out), "--no-progress"]) == 1
    assert "(ran 1 now, 6 were done)" in capsys.readouterr().out  # only the unreachable budget, recorded again
    assert plan_file.stat().st_mtime_ns == plan_mtime
    assert {t: store.result_path(t).stat().st_mtime_ns for t in mtimes} == mtimes
    assert len(pd.read_parquet(out / "results.parquet")) == 7
    assert main(["sweep", str(spec_path), "--out", str(out), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert dry.count("done") == 6 and "qat mixed-asic_energy-0.3" in dry and "holds results" not in dry

    assert has_mixed(out)
    frame = mx.load(out)
    assert set(frame[frame.kind == "uniform"].name) == {"W8A8", "W4A4", "W2A2"}
    assert any("equals what the simulators report" in s for s in mx.key_findings(frame))
    res = execute("mixed", tmp_path / "page", {"run_dir": str(out)}, timeout_s=600)
    assert res.status == "ok", res.error
    page = res.ipynb.read_text()
    assert "Key findings" in page and "mixed-asic_energy-0.3" in page and "could not be shown" not in page


@pytest.mark.slow  # Ray, one tiny trial and a plan that raises
def test_a_failed_plan_fails_its_trials_and_the_sweep_goes_on(ray_local, tmp_path, capsys) -> None:
    from workbook.cli import main

    head = HEAD.replace("bits: [8, 4, 2]", "bits: [4]").replace("include: [{method: fp32}]\n", "")
    _, spec_path = _spec(tmp_path, "mixed: {metric: bops, budgets: [0.3, 0.5], sensitivity: noise, options: {batches: many}}\n", head)
    out = tmp_path / "out"
    assert main(["sweep", str(spec_path), "--out", str(out), "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "3 trials: 1 ok, 2 failed" in text
    df = pd.read_parquet(out / "results.parquet").set_index("label")
    assert df.loc["qat W4A4 lsq channel seed=0", "status"] == "ok"
    failed = df[df.origin == "mixed"]
    assert set(failed.mixed) == {"mixed-bops-0.3", "mixed-bops-0.5"} and (failed.failure == "plan").all()
    assert failed.error.str.contains("ValueError: invalid literal for int").all()
    (plan_file,) = (out / "mixed").glob("*.json")
    assert json.loads(plan_file.read_text())["status"] == "failed" and "Traceback" in plan_file.with_suffix(".log").read_text()


# ---- the report: the mixed page only where the run has mixed trials ------------------------------


def _records() -> list[dict]:
    base = {"model": "lenet", "dataset": "digits", "method": "qat", "status": "ok", "error": None, "origin": "grid", "mixed_base": "b"}
    uni = [{**base, "trial_id": f"u{b}", "w_bits": b, "a_bits": b, "test_acc": acc, "int_acc": acc, "cost_asic_energy": e}
           for b, acc, e in ((8, 0.9, 10.0), (4, 0.8, 6.0), (2, 0.3, 3.0))]  # fmt: skip
    mix = [{**base, "trial_id": f"m{i}", "origin": "mixed", "w_bits": 8, "a_bits": 8, "test_acc": acc, "int_acc": acc,
            "cost_asic_energy": e, "predicted_cost": p, "actual_cost": e, "mixed": f"mixed-asic_energy-{v}", "mixed_metric": "asic_energy",
            "layer_bits": {"0": [8, 8], "4": [4, 8], "11": [8, 8], "9": [2, 4]}}
           for i, (v, acc, e, p) in enumerate(((0.5, 0.85, 5.0, 5.0), (0.7, 0.88, 7.0, 7.5)))]  # fmt: skip
    failed = {**base, "trial_id": "m9", "origin": "mixed", "status": "failed", "w_bits": 8, "a_bits": 8, "failure": "plan",
              "mixed": "mixed-asic_energy-0.01", "mixed_metric": "asic_energy", "error": "InfeasibleBudgetError: the cheapest needs 3 uJ"}  # fmt: skip
    return [*uni, *mix, failed, {**base, "trial_id": "f", "method": "fp32", "mixed_base": None, "w_bits": 8, "a_bits": 8}]


def _sweep(d: Path, records: list[dict]) -> Path:
    from workbook.results import records_to_parquet_bytes

    d.mkdir(parents=True)
    (d / "results.parquet").write_bytes(records_to_parquet_bytes(records))
    return d


def test_study_frontier_findings_and_bit_map(tmp_path) -> None:
    from workbook.report import has_mixed, pages_for
    from workbook.studies import mixed as mx

    out = _sweep(tmp_path / "sweep", _records())
    assert has_mixed(out) and pages_for(out)[-1] == "mixed"
    plain = _sweep(tmp_path / "plain", [r for r in _records() if r["origin"] != "mixed"])
    assert not has_mixed(plain) and "mixed" not in pages_for(plain) and not has_mixed(tmp_path / "none")
    df = mx.load(out)
    assert df.attrs == {"metric": "asic_energy", "unit": "uJ", "higher_is_better": False}
    t = mx.frontier_table(df).set_index("name")
    assert list(t.index) == ["W2A2", "mixed-asic_energy-0.5", "W4A4", "mixed-asic_energy-0.7", "W8A8"]
    assert t.loc["W4A4", "dominated"] and not t.loc["mixed-asic_energy-0.5", "dominated"]  # 0.85 at 5 uJ beats 0.80 at 6
    bm = mx.bit_map(df)
    assert list(bm.index) == ["0", "4", "9", "11"] and bm.loc["9", "mixed-asic_energy-0.5"] == "W2A4"
    assert list(bm.columns) == ["mixed-asic_energy-0.5", "mixed-asic_energy-0.7"]
    text = "\n".join(mx.key_findings(df))
    assert "2 of 3 mixed-precision configurations trained, against 3 uniform trials" in text
    assert "mixed-asic_energy-0.5: 85.00% at 5 uJ; the best uniform trial within it, W2A2, reaches 30.00% at 3 uJ (+55.00 points)" in text
    assert "differ for mixed-asic_energy-0.7" in text  # predicted 7.5, measured 7.0: said, not hidden
    assert "mixed-asic_energy-0.01 did not train: InfeasibleBudgetError: the cheapest needs 3 uJ" in text
    fps = df[df.status == "ok"].copy()
    fps.attrs = {**df.attrs, "higher_is_better": True}  # a frame rate: more is better, so the fastest and most accurate wins
    assert mx.dominated(fps).tolist() == [n != "W8A8" for n in fps.name]
    with pytest.raises(ValueError, match="no mixed-precision trials"):
        mx.load(plain)


@pytest.mark.slow  # executes the mixed notebook
def test_workbook_report_adds_the_mixed_page_where_the_run_has_mixed_trials(tmp_path, capsys) -> None:
    from workbook.cli import main

    run = tmp_path / "reports" / "r1"
    _sweep(run / "sweep", _records())
    (run / "run.json").write_text(json.dumps({"run_id": "r1", "date": "2026-01-01T00:00:00", "notebooks": []}))
    plain = tmp_path / "reports" / "r2"
    _sweep(plain / "sweep", [r for r in _records() if r["origin"] != "mixed"])
    (plain / "run.json").write_text(json.dumps({"run_id": "r2", "date": "2026-01-01T00:00:00", "notebooks": []}))
    assert main(["report", str(run), str(plain), "--root", str(tmp_path / "reports")]) == 0
    manifest = json.loads((run / "run.json").read_text())
    assert [nb["name"] for nb in manifest["notebooks"]] == ["mixed"] and manifest["notebooks"][0]["status"] == "ok"
    page = (run / "mixed.html").read_text()
    assert "Key findings" in page and "mixed-asic_energy-0.5" in page and "could not be shown" not in page
    assert not (plain / "mixed.html").exists() and json.loads((plain / "run.json").read_text())["notebooks"] == []


@given(
    st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5)), min_size=1, max_size=8),
    st.booleans(),
)
def test_dominated_matches_a_plain_pairwise_check(points, higher) -> None:
    from workbook.studies import mixed as mx

    df = pd.DataFrame({"cost": [float(c) for c, _ in points], "test_acc": [a / 5 for _, a in points]})
    df.attrs["higher_is_better"] = higher

    def beats(j: int, i: int) -> bool:
        (cj, aj), (ci, ai) = points[j], points[i]
        return (cj >= ci if higher else cj <= ci) and aj > ai

    want = [any(beats(j, i) for j in range(len(points)) if j != i) for i in range(len(points))]
    assert mx.dominated(df).tolist() == want


def test_a_stored_trial_is_priced_again_when_the_array_changes(tmp_path) -> None:
    """A trial kept from an earlier run is re-priced from its saved integer model when the
    spec now prices it on another array, and left alone when nothing changed."""
    import io

    import torch

    from qatlab.intmodel import convert
    from qatlab.models import build_model
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.quant import QuantSpec

    small, _ = _spec(tmp_path, ASIC_HEAD + "    rows: 8\n    cols: 8\n")
    default, _ = _spec(tmp_path, ASIC_HEAD + "    rows: 32\n")
    store = ResultStore(tmp_path / "out")
    t = next(t for t in small.trials if t.config.get("method") == "qat")
    torch.manual_seed(0)
    q = prepare_qat(build_model("lenet").eval(), QuantSpec(bits=8, granularity="channel"), QuantSpec(bits=8, symmetric=False))
    calibrate(q, iter([torch.rand(8, 1, 28, 28)]))
    buf = io.BytesIO()
    torch.save(convert(q.eval(), (1, 28, 28)).to_dict(), buf)
    store.save({"trial_id": t.trial_id, "status": "ok", "test_acc": 0.5}, artifacts={"intmodel.pt": buf.getvalue()})

    run = ms.MixedRun(small, store, "resume")
    assert run.reprice([t]) == [t.trial_id]  # a record without a basis: priced now
    rec = store.load(t.trial_id)
    want = ms.trial_costs(buf.getvalue(), run.meta(t)["costing"])
    assert {k: rec[k] for k in want} == want and rec["cost_error"] is None and rec["test_acc"] == 0.5
    assert run.reprice([t]) == []  # same basis: untouched
    assert store.load(t.trial_id) == rec

    assert ms.MixedRun(default, store, "resume").reprice([t]) == [t.trial_id]
    moved = store.load(t.trial_id)
    assert moved["cost_asic_energy"] != rec["cost_asic_energy"] and moved["cost_bops"] == rec["cost_bops"]
    assert moved["cost_asic_energy"] == ms.trial_costs(buf.getvalue(), {"asic": None, "fpga": None})["cost_asic_energy"]

    (store.trial_dir(t.trial_id) / "intmodel.pt").unlink()  # a run that saved no models: the costs go, and say why
    assert ms.MixedRun(small, store, "resume").reprice([t]) == [t.trial_id]
    gone = store.load(t.trial_id)
    assert "cost_asic_energy" not in gone and "no integer model was saved" in gone["cost_error"]
