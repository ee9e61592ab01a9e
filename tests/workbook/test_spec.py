"""Spec loading, validation and expansion; bad spec files fail fast; cluster manifests."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab.config import TrainConfig
from workbook.cli import main
from workbook.spec import FP32_IGNORED, SpecError, available_specs, load_spec, spec_from_dict

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = {"name": "t", "dataset": "digits", "model": "lenet", "train": {"epochs": 1}}


# ---- bundled specs ------------------------------------------------------------------


def test_bundled_specs_load():
    assert {"quick", "full", "digits-smoke"} <= set(available_specs())
    smoke = load_spec("digits-smoke")
    assert len(smoke.trials) == 4 and not smoke.invalid_trials
    assert {t.config["dataset"] for t in smoke.trials} == {"digits"}

    quick = load_spec("quick")
    assert {t.config["dataset"] for t in quick.trials} == {"fashion-mnist"}
    assert {t.config["model"] for t in quick.trials} == {"lenet"}
    assert all(t.config["limit_train"] == 12000 and t.config["epochs"] == 2 for t in quick.trials)
    kinds = {(t.config["method"], t.config["w_bits"], t.config["a_bits"]) for t in quick.trials if t.config["method"] != "fp32"}
    assert {("ptq", 8, 8), ("qat", 8, 8), ("qat", 4, 4)} <= kinds
    assert len(quick.trials) <= 6  # it has to finish in ~10 min on 2 CPU cores

    full = load_spec("full")
    cfgs = [t.config for t in full.trials]
    assert not full.invalid_trials and all(c["limit_train"] is None for c in cfgs)
    q = [c for c in cfgs if c["method"] in ("ptq", "qat")]
    assert {c["w_bits"] for c in q} >= {8, 4, 2}
    assert {c["ste"] for c in q} >= {"lsq", "pact", "clipped"}
    assert {c["granularity"] for c in q} >= {"tensor", "channel"}
    assert {c["seed"] for c in cfgs} == {0, 1, 2}
    assert full.resources.num_gpus > 0
    # every (method, bits, ste, granularity, seed) point of the grid is there once
    points = {(c["method"], c["w_bits"], c["a_bits"], c["ste"], c["granularity"], c["seed"]) for c in q}
    for m, b, s, g, seed in itertools.product(["ptq", "qat"], [8, 4, 2], ["lsq", "pact", "clipped"], ["tensor", "channel"], [0, 1, 2]):
        assert (m, b, b, s, g, seed) in points
    assert len({t.trial_id for t in full.trials}) == len(full.trials)


# ---- expansion ----------------------------------------------------------------------


def test_grid_product_include_and_ids():
    s = spec_from_dict(
        {
            **BASE,
            "grid": {"method": ["ptq", "qat"], "w_bits": [8, 4], "a_bits": [8], "seed": [0, 1]},
            "include": [{"method": "qat", "bits": 2, "ste": "pact"}, {"method": "qat", "w_bits": 4, "seed": [5, 6]}],
        }
    )
    assert len(s.trials) == 2 * 2 * 2 + 1 + 2
    grid_cfgs = [t.config for t in s.trials if t.origin == "grid"]
    assert [(c["method"], c["w_bits"], c["seed"]) for c in grid_cfgs] == list(itertools.product(["ptq", "qat"], [8, 4], [0, 1]))
    inc0 = next(t for t in s.trials if t.origin == "include[0]").config
    # include entries inherit the grid's first values for keys they do not give
    assert (inc0["w_bits"], inc0["a_bits"], inc0["ste"], inc0["seed"], inc0["epochs"]) == (2, 2, "pact", 0, 1)
    assert [t.config["seed"] for t in s.trials if t.origin == "include[1]"] == [5, 6]
    for t in s.trials:  # the id is TrainConfig's, over every resolved field
        assert t.trial_id == TrainConfig.from_dict(dict(t.config)).trial_id
        assert set(t.config) == set(TrainConfig().to_dict())


def test_trial_ids_are_stable_and_device_free(tmp_path):
    a = load_spec(write(tmp_path, "name: a\ndataset: digits\ntrain: {lr: 1, epochs: 1}\ngrid: {seed: [0], w_bits: [4]}\n", "a.yaml"))
    b = load_spec(
        write(tmp_path, "grid: {w_bits: [4], seed: [0]}\ntrain: {device: cpu, epochs: 1, lr: 1.0}\ndataset: digits\nname: b\n", "b.yaml")
    )
    assert [t.trial_id for t in a.trials] == [t.trial_id for t in b.trials]
    # YAML 1.1 reads `1e-3` as a string; a number-typed key accepts it
    c = load_spec(write(tmp_path, "name: c\ndataset: digits\ntrain: {lr: 1e-3}\ngrid: {seed: [0]}\n", "c.yaml"))
    assert c.trials[0].config["lr"] == 1e-3


def test_fp32_points_collapse_and_duplicates_count():
    s = spec_from_dict(
        {**BASE, "grid": {"method": ["fp32", "qat"], "w_bits": [8, 4], "ste": ["lsq", "pact"]}, "include": [{"method": "qat", "w_bits": 8}]}
    )
    fp32 = [t for t in s.trials if t.config["method"] == "fp32"]
    assert len(fp32) == 1 and len(s.trials) == 1 + 4
    assert s.collapsed == 3 + 1  # three extra fp32 points, one include equal to a grid point
    defaults = TrainConfig().to_dict()
    assert all(fp32[0].config[k] == defaults[k] for k in FP32_IGNORED)


@settings(max_examples=25, deadline=None)
@given(
    bits=st.lists(st.integers(2, 8), min_size=1, max_size=3, unique=True),
    seeds=st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
    methods=st.lists(st.sampled_from(["ptq", "qat"]), min_size=1, max_size=2, unique=True),
)
def test_grid_size_and_order_independence(bits, seeds, methods):
    one = spec_from_dict({**BASE, "grid": {"method": methods, "w_bits": bits, "seed": seeds}})
    two = spec_from_dict({**BASE, "grid": {"seed": seeds[::-1], "w_bits": bits, "method": methods[::-1]}})
    assert len(one.trials) == len(methods) * len(bits) * len(seeds)
    assert {t.trial_id for t in one.trials} == {t.trial_id for t in two.trials}


def test_invalid_trial_is_kept_with_a_message_naming_the_field():
    s = spec_from_dict({**BASE, "grid": {"method": ["qat"], "w_bits": [8]}, "include": [{"method": "qat", "w_bits": 1}]}, "x.yaml")
    assert len(s.trials) == 2 and len(s.invalid_trials) == 1
    err = s.invalid_trials[0].error
    assert "w_bits" in err and "include[0].w_bits" in err and "x.yaml" in err
    with pytest.raises(SpecError, match=r"x\.yaml: no valid trial: lr must be > 0.*train\.lr"):
        spec_from_dict({**BASE, "train": {"lr": -1.0}, "grid": {"seed": [0]}}, "x.yaml")


# ---- errors name the key and the file -----------------------------------------------


@pytest.mark.parametrize(
    "text, match",
    [
        ("name: t\nbogus: 1\ngrid: {seed: [0]}\n", r": bogus: unknown key"),
        ("name: t\ntrain: {wbits: 4}\ngrid: {seed: [0]}\n", r": train\.wbits: unknown trial key"),
        ("name: t\ngrid: {w_bits: [8, eight]}\n", r": grid\.w_bits\[1\]: expected an integer"),
        ("name: t\ngrid: {seed: [0]}\ntrain: {epochs: 1.5}\n", r": train\.epochs: expected an integer"),
        ("name: t\ngrid: {w_bits: []}\n", r": grid\.w_bits: empty list"),
        ("name: t\ngrid: {}\n", r": grid: the spec defines no trials"),
        ("name: t\nmodel: vgg\ngrid: {seed: [0]}\n", r": model: unknown model 'vgg'"),
        ("name: t\ndataset: cifar\ngrid: {seed: [0]}\n", r": dataset: unknown dataset 'cifar'"),
        ("name: t\ngrid: {model: [lenet, vgg]}\n", r": grid\.model\[1\]: unknown model 'vgg'"),
        ("name: t\ngrid: {seed: [0]}\nresources: {num_gpus: 1.5}\n", r": resources\.num_gpus: a fraction"),
        ("name: t\ngrid: {seed: [0]}\nresources: {num_cpus: -1}\n", r": resources\.num_cpus: must be >= 0"),
        ("name: t\ngrid: {seed: [0]}\nresources: {gpus: 1}\n", r": resources\.gpus: unknown key"),
        ("name: t\ngrid: {bits: [4], w_bits: [8]}\n", r": grid\.bits: 'bits' sets w_bits and a_bits"),
        ("name: ../escape\ngrid: {seed: [0]}\n", r": name: required"),
        ("grid: {seed: [0]}\n", r": name: required"),
        ("- just\n- a list\n", r"expected a mapping"),
        ("", r"expected a mapping.*empty file"),
        ("name: t\ninclude: {method: qat}\n", r": include: expected a list"),
        ("name: t\ngrid: {seed: [0]}\ntrain: {model: mlp}\nmodel: lenet\n", r": train\.model: model is also given"),
    ],
)
def test_spec_errors_name_key_and_file(tmp_path, text, match):
    p = write(tmp_path, text)
    with pytest.raises(SpecError, match=match) as e:
        load_spec(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "\n" not in msg


def test_yaml_syntax_error_is_one_line_with_position(tmp_path):
    p = write(tmp_path, "name: t\ngrid: {seed: [0, 1}\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:2:") and "YAML syntax error" in msg and "\n" not in msg


def test_missing_spec_names_the_bundled_ones(tmp_path):
    with pytest.raises(SpecError, match=r"no such spec file.*digits-smoke"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"nope: no such spec file"):
        load_spec("nope")


# ---- the CLI fails fast and writes nothing ------------------------------------------


@pytest.mark.parametrize(
    "text, expect",
    [
        ("name: t\ngrid: {seed: [0, 1}\n", "YAML syntax error"),
        (None, "no such spec file"),
        ("name: t\nmodel: vgg\ngrid: {seed: [0]}\n", "unknown model 'vgg'"),
        ("name: t\ndataset: imagenet\ngrid: {seed: [0]}\n", "unknown dataset 'imagenet'"),
    ],
    ids=["yaml-syntax", "missing-file", "unknown-model", "unknown-dataset"],
)
def test_cli_bad_spec_fails_fast_and_writes_nothing(tmp_path, capsys, monkeypatch, text, expect):
    spec = tmp_path / "spec.yaml"
    if text is not None:
        spec.write_text(text)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # the default --out (runs/NAME) would be created here
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbook: error: ") and expect in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert main(["sweep", str(spec)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_dry_run_lists_trials_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", "digits-smoke", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n  run ") == 4 and "would run 4 of 4" in text and "nothing written" in text
    assert not out.exists()


def test_cli_strict_refuses_invalid_trials(tmp_path, capsys):
    p = write(tmp_path, "name: t\ndataset: digits\ngrid: {seed: [0]}\ninclude: [{w_bits: 1}]\n")
    assert main(["sweep", str(p), "--out", str(tmp_path / "o"), "--strict"]) == 2
    assert "w_bits must be in 2..16" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- cluster manifests under docs/ --------------------------------------------------


def test_ray_up_cluster_yaml_is_valid():
    import json

    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((REPO / "docs/cluster/ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # Ray's own schema for `ray up` files
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [n for n, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and all(types[n]["max_workers"] >= 1 for n in gpu_types)
    assert types[cfg["head_node_type"]].get("resources", {}).get("GPU", 0) == 0  # no trials on the head
    setup = "\n".join(cfg.get("setup_commands", []) + cfg.get("head_setup_commands", []))
    assert "pip install" in setup and "qatlab" in setup
    validate_config(prepare_config(cfg))  # what `ray up` does before launching anything


def test_kuberay_raycluster_manifest_is_sane():
    docs = [d for d in yaml.safe_load_all((REPO / "docs/cluster/kuberay-raycluster.yaml").read_text()) if d]
    rc = next(d for d in docs if d.get("kind") == "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    spec = rc["spec"]
    head = spec["headGroupSpec"]
    head_c = head["template"]["spec"]["containers"][0]
    ports = {p["containerPort"] for p in head_c.get("ports", [])}
    assert {6379, 8265, 10001} <= ports
    assert head["rayStartParams"].get("num-cpus") in ("0", 0)  # trials go to workers
    workers = spec["workerGroupSpecs"]
    gpu_groups = [w for w in workers if "nvidia.com/gpu" in w["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups
    for w in gpu_groups:
        c = w["template"]["spec"]["containers"][0]
        lim = c["resources"]["limits"]
        assert int(lim["nvidia.com/gpu"]) >= 1
        assert c["resources"]["requests"].get("nvidia.com/gpu", lim["nvidia.com/gpu"]) == lim["nvidia.com/gpu"]
        assert 0 <= w["minReplicas"] <= w.get("replicas", w["minReplicas"]) <= w["maxReplicas"]
        assert w["groupName"] and "image" in c
        assert "gpu" in c["image"] or "cu1" in c["image"]  # a CUDA image
        tol = w["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" for t in tol)
    assert head_c["image"].split(":")[0] == gpu_groups[0]["template"]["spec"]["containers"][0]["image"].split(":")[0]


# ---- errors point to the line; a user's model and data --------------------------------------


@pytest.mark.parametrize(
    "text, where",
    [
        ("name: t\ngrid: {seed: [0]}\ntrain:\n  epochs: 1\n  wbits: 4\n", ":5:3: train.wbits: unknown trial key"),
        ("name: t\ngrid:\n  w_bits: [8, eight]\n", ":3:15: grid.w_bits[1]: expected an integer"),
        ("name: t\nmodel: vgg\ngrid: {seed: [0]}\n", ":2:1: model: unknown model 'vgg'"),
        ("name: t\ngrid: {seed: [0]}\nresources:\n  num_gpus: 1.5\n", ":4:3: resources.num_gpus: a fraction"),
        (
            "name: t\ndataset: digits\nmodel: tests.usercode.nets:missing\ngrid: {seed: [0]}\n",
            ":3:1: model: model factory 'tests.usercode.nets:missing': 'tests.usercode.nets' has no attribute 'missing'",
        ),
        (
            "name: t\ndataset: digits\ngrid:\n  model: [lenet, tests.usercode.nosuch:net]\n",
            ":4:18: grid.model[1]: model factory 'tests.usercode.nosuch:net': cannot import module",
        ),
        ("name: t\ndataset: tests.usercode.loaders:nope\ngrid: {seed: [0]}\n", ":2:1: dataset: dataset loader"),
        ("name: t\ndataset: missing/data.npz\ngrid: {seed: [0]}\n", ":2:1: dataset: no such .npz file"),
        ("name: t\ndataset: ./no-folder\ngrid: {seed: [0]}\n", ":2:1: dataset: no such image folder"),
    ],
)
def test_errors_point_to_file_line_column(tmp_path, text, where):
    p = write(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert msg.startswith(str(p) + where) and "\n" not in msg, msg


def test_invalid_trial_names_its_line(tmp_path):
    p = write(tmp_path, "name: t\ndataset: digits\ngrid: {seed: [0]}\ninclude:\n  - {method: qat, w_bits: 1}\n")
    (bad,) = load_spec(p).invalid_trials
    assert f"include[0].w_bits in {p}:5:" in bad.error


def test_user_model_and_npz_data_in_a_spec(tmp_path):
    import numpy as np

    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "d.npz", x_train=np.zeros((8, 4, 4), np.uint8), y_train=np.arange(8) % 2,
             x_test=np.zeros((4, 4, 4), np.uint8), y_test=np.arange(4) % 2)  # fmt: skip
    (tmp_path / "imgs").mkdir()
    p = write(
        tmp_path,
        "name: u\nmodel: tests.usercode.nets:tiny_cnn\ndataset: data/d.npz\n"
        "train: {model_args: {width: 4}, num_workers: 2}\ngrid: {seed: [0, 1]}\n"
        "include: [{dataset: ./imgs, loader_args: {size: 8}}]\n",
    )
    s = load_spec(p)
    assert not s.invalid_trials and len(s.trials) == 3
    npz = [t for t in s.trials if t.config["dataset"].endswith(".npz")]
    # relative paths are taken from the spec's folder and stored absolute for the workers
    assert {t.config["dataset"] for t in npz} == {str(tmp_path / "data" / "d.npz")}
    assert all(t.config["model_args"] == {"width": 4} and t.config["num_workers"] == 2 for t in s.trials)
    img = next(t for t in s.trials if t.origin == "include[0]")
    assert img.config["dataset"] == str(tmp_path / "imgs") and img.config["loader_args"] == {"size": 8}
    # num_workers only changes speed: not in the id
    again = spec_from_dict({"name": "u", "model": "tests.usercode.nets:tiny_cnn", "dataset": str(tmp_path / "data" / "d.npz"),
                            "train": {"model_args": {"width": 4}}, "grid": {"seed": [0, 1]}})  # fmt: skip
    assert {t.trial_id for t in again.trials} == {t.trial_id for t in npz}


def test_cross_field_errors_spoil_only_their_trial(tmp_path):
    p = write(tmp_path, "name: t\ndataset: digits\ngrid: {seed: [0]}\ninclude:\n  - {model_args: {hidden: 3}}\n")
    (bad,) = load_spec(p).invalid_trials
    assert "model_args apply to an import-path model only" in bad.error and f"include[0].model_args in {p}:5:" in bad.error


def test_relative_data_paths_follow_base_dir(tmp_path, monkeypatch):
    (tmp_path / "sub" / "imgs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    d = {"name": "r", "dataset": "./imgs", "grid": {"seed": [0]}}
    with pytest.raises(SpecError, match="no such image folder"):
        spec_from_dict(d)  # the working directory has no imgs/
    s = spec_from_dict(d, base_dir=tmp_path / "sub")
    assert s.trials[0].config["dataset"] == str(tmp_path / "sub" / "imgs")


# ---- duplicate keys, sizes and bytes: refused with the lines at fault ---------------------


@pytest.mark.parametrize(
    "text, second, first",
    [
        ("name: d\ninclude:\n  - {method: qat}\ninclude:\n  - {method: ptq}\n", "4:1", "2:1"),
        ("name: d\ntrain: {epochs: 1, epochs: 500}\ngrid: {method: [ptq]}\n", "2:20", "2:9"),
        ("name: d\ngrid: {method: [ptq]}\nresources:\n  num_cpus: 1\n  num_cpus: 2\n", "5:3", "4:3"),
        ("name: d\ninclude:\n  - method: qat\n    ste: lsq\n    method: ptq\n", "5:5", "3:5"),
        ("name: d\ngrid: {method: [ptq]}\nname: e\n", "3:1", "1:1"),
    ],
)
def test_duplicate_keys_name_both_places(tmp_path, text, second, first):
    p = write(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert f"{p}:{second}:" in msg and f"(first at {p}:{first})" in msg and "given twice" in msg


def test_a_merge_key_may_still_be_overridden(tmp_path):
    # `<<` exists to be overridden: that is not a duplicate.
    p = write(tmp_path, "name: d\ntrain:\n  <<: {epochs: 1, lr: 0.1}\n  epochs: 2\ngrid: {method: [ptq]}\n")
    assert load_spec(p).defaults["epochs"] == 2


@settings(max_examples=30, deadline=None)
@given(keys=st.lists(st.sampled_from(["epochs", "lr", "seed", "batch_size"]), min_size=1, max_size=6))
def test_duplicates_refused_exactly_when_a_key_repeats(tmp_path_factory, keys):
    # Reference: a plain scan of the key list.
    body = ", ".join(f"{k}: 1" if k != "lr" else "lr: 0.1" for k in keys)
    p = write(tmp_path_factory.mktemp("s"), f"name: d\ntrain: {{{body}}}\ngrid: {{method: [ptq]}}\n")
    if len(set(keys)) < len(keys):
        with pytest.raises(SpecError, match="given twice"):
            load_spec(p)
    else:
        load_spec(p)


def test_bytes_depth_and_size_are_spec_errors(tmp_path):
    cases = {
        b"name: \xff\xfe": "not UTF-8 text",
        b"[" * 5000: "nested too deeply",
        b"name: d\x00": "YAML error",
    }
    for data, words in cases.items():
        p = tmp_path / "s.yaml"
        p.write_bytes(data)
        with pytest.raises(SpecError, match=words):
            load_spec(p)


def test_trial_count_is_capped_before_expansion(tmp_path, monkeypatch):
    import workbook.spec as spec_mod

    monkeypatch.setattr(spec_mod, "MAX_TRIALS", 7)
    p = write(tmp_path, "name: d\ngrid: {seed: [0, 1, 2], epochs: [1, 2, 3]}\ninclude: [{seed: [5, 6]}]\n")
    with pytest.raises(SpecError, match="expands to 11 trials, more than the 7"):
        load_spec(p)
    monkeypatch.setattr(spec_mod, "MAX_TRIALS", 11)
    assert len(load_spec(p).trials) == 11


def _alias_bomb(levels: int) -> str:
    lines = ["name: b", "l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join([*lines, "grid: {method: [ptq]}", f"train: {{model_args: {{x: *l{levels - 1}}}}}"]) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    # Nine levels of ten aliases: 10^9 values if expanded; refused in milliseconds.
    with pytest.raises(SpecError, match="expands to more than 1000000 YAML values"):
        load_spec(write(tmp_path, _alias_bomb(9)))


def test_aliases_that_stay_small_still_read(tmp_path):
    # Two levels: 110 values; the `l0`/`l1` keys are unknown, which is what is reported.
    with pytest.raises(SpecError, match="l0: unknown key"):
        load_spec(write(tmp_path, _alias_bomb(2)))


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: r\ngrid: {method: [ptq]}\ntrain: {model_args: &a {x: *a}}\n", "Circular reference"),
        ("name: r\ngrid: {method: &m [ptq, *m]}\n", "grid.method"),
    ],
)
def test_recursive_aliases_are_spec_errors(tmp_path, text, words):
    with pytest.raises(SpecError, match=words):
        load_spec(write(tmp_path, text))
