import json

import pytest

from workbook.studies import mixed as mx


def _write(d, name, acc, energy, bits):
    (d / f"{name}.json").write_text(json.dumps({"name": name, "test_acc": acc, "int_acc": acc, "energy_uj": energy, "layer_bits": bits}))


def test_frontier_and_bit_map(tmp_path) -> None:
    _write(tmp_path, "uniform_w8a8", 0.90, 10.0, {"_0": [8, 8], "_4": [8, 8]})
    _write(tmp_path, "uniform_w4a4", 0.85, 6.0, {"_0": [8, 8], "_4": [4, 4]})
    _write(tmp_path, "mixed_at_w4a4_energy", 0.88, 6.0, {"_0": [8, 8], "_4": [4, 8]})
    (tmp_path / "plan.json").write_text("{}")
    df = mx.load_rows(tmp_path)
    t = mx.frontier_table(df).set_index("name")
    assert t.loc["uniform_w4a4", "dominated"] and not t.loc["mixed_at_w4a4_energy", "dominated"]
    bm = mx.bit_map(df)
    assert bm.loc["_4", "mixed_at_w4a4_energy"] == "W4A8" and bm.loc["_0", "uniform_w4a4"] == "W8A8"
    mx.frontier_figure(df)


def test_bit_map_shows_quantizers_that_feed_no_layer(tmp_path) -> None:
    _write(tmp_path, "mixed_at_w4a4_energy", 0.88, 6.0, {"_0": [8, 8], "_4": [4, 8], "add_5": [2], "_4.act_fq": [4]})
    bm = mx.bit_map(mx.load_rows(tmp_path))
    assert bm["mixed_at_w4a4_energy"].to_dict() == {"_0": "W8A8", "_4": "W4A8", "_4.act_fq": "A4", "add_5": "A2"}


def test_bad_folders_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no trial rows"):
        mx.load_rows(tmp_path)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a trial row"):
        mx.load_rows(tmp_path)


@pytest.mark.slow
def test_notebook_runs(tmp_path) -> None:
    from workbook.notebooks import execute

    rows = tmp_path / "rows"
    rows.mkdir()
    _write(rows, "uniform_w8a8", 0.90, 10.0, {"_0": [8, 8]})
    _write(rows, "mixed_at_half_w8a8", 0.89, 5.0, {"_0": [4, 8]})
    res = execute("mixed", tmp_path / "out", {"run_dir": str(rows)}, timeout_s=600)
    assert res.error is None, res.error
