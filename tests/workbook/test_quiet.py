"""`workbook run` prints what the user needs: no progress bar into a log, no warnings
from Ray or the notebook kernel that nobody can act on."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from workbook import notebooks
from workbook.sweep.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_sweep_progress_bar_only_on_a_terminal() -> None:
    log = Progress(io.StringIO())
    log.start(4, enabled=True)
    assert log.bar is None
    log.echo("ok     fp32 seed=0")
    assert log.stream.getvalue() == "ok     fp32 seed=0\n"
    term = Progress(_Tty())
    term.start(4, enabled=True)
    assert term.bar is not None
    term.close()


def test_notebook_progress_bar_only_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_execute(name: str, out_dir: object, parameters: object) -> notebooks.NotebookResult:
        return notebooks.NotebookResult(name, "ok", tmp_path / f"{name}.ipynb")

    monkeypatch.setattr(notebooks, "execute", fake_execute)
    monkeypatch.setattr(notebooks, "render_html", lambda ipynb, no_input=True: Path(ipynb).with_suffix(".html"))
    results = notebooks.run_notebooks(tmp_path, {}, names=("kernels", "hardware"), progress=True)
    assert [r.status for r in results] == ["ok", "ok"]
    assert "notebooks" not in capsys.readouterr().err  # stderr is not a terminal here: no bar


def test_kernel_is_started_quietly() -> None:
    assert "--IPKernelApp.log_level=ERROR" in notebooks.QUIET_KERNEL


@pytest.mark.slow  # starts Ray
def test_ray_start_does_not_announce_token_auth(capfd: pytest.CaptureFixture[str]) -> None:
    import ray

    from workbook.sweep import connect

    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    _, connected = connect(None)
    try:
        assert connected
    finally:
        ray.shutdown()
    err = capfd.readouterr().err
    assert "Token authentication is enabled" not in err
