"""The progress bar a user watches: a word while models load, rate and ETA from the first items."""

from __future__ import annotations

import time

from rich.console import Console

from pipeline.core.runner import EtaColumn, RateColumn, _progress


def test_rate_and_eta_come_from_the_first_items_not_rich_s_30_s_window():
    progress = _progress(Console(width=120, record=True, force_terminal=True))
    task = progress.add_task("caption (loading)", total=1000, failed=0, first_at=None)
    t = progress.tasks[0]
    assert str(RateColumn().render(t)) == "  -/s" and str(EtaColumn().render(t)) == "eta -:--:--"
    progress.update(task, description="caption", first_at=time.monotonic() - 10.0, advance=100)
    t = progress.tasks[0]
    assert t.speed is None  # rich has one sample: no speed of its own yet
    rate = float(str(RateColumn().render(t)).removesuffix("/s"))
    assert 9.0 < rate <= 10.0  # 100 items in about 10 s
    eta = str(EtaColumn().render(t))
    h, m, s = (int(x) for x in eta.removeprefix("eta ").split(":"))
    assert 85 <= h * 3600 + m * 60 + s <= 90  # 900 left at about 10/s
    progress.update(task, completed=1000)
    assert str(EtaColumn().render(progress.tasks[0])) == "done"


def test_a_run_without_a_terminal_says_it_is_loading_then_prints_progress_lines(demo_data, tmp_path):
    import io

    from pipeline.core.config import RunnerConfig
    from pipeline.core.manifest import build_manifest
    from pipeline.core.runner import run_stage
    from pipeline.core.stage import StageContext

    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False)
    m = build_manifest({"stages": {"ingest": {"sources": [{"path": str(demo_data / "ffhq")}]}}}, None)
    run_stage("ingest", m.stages["ingest"], StageContext(tmp_path / "out"), RunnerConfig(), console)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("ingest: ") and "pending; loading" in lines[0]
    assert any(line.startswith("ingest: ") and "/s, eta" in line for line in lines[1:])
