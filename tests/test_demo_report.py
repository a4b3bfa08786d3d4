"""The demo's figures, targets, headline, terminal screens and HTML report, from synthetic runs (no server)."""

from __future__ import annotations

import io
import math
import re

import pytest
from rich.console import Console

from resilient.demo.configs import CONFIGS, Config
from resilient.demo.load import Target as LoadTarget
from resilient.demo.metrics import (
    GOALS,
    LAG_LIMIT,
    MEASURES,
    Goal,
    Summary,
    check_targets,
    headline,
    headlines,
    inconclusive,
    rerun_hint,
    summarize,
)
from resilient.demo.runner import ConfigRun, ScenarioRun
from resilient.demo.upstream import SCENARIOS

BY_KEY = {c.key: c for c in CONFIGS}


async def _never(key: int) -> str:  # pragma: no cover - the records are made up
    return "ok"


def _config_run(
    config: Config,
    *,
    duration: float = 10.0,
    rate: float = 10.0,
    fail: tuple[float, float] = (0.0, 0.0),
    latency: float = 0.01,
    failed_latency: float | None = None,
    per_call: float = 1.0,
    fault_per_call: float | None = None,
    breaker: list[tuple[float, str]] | None = None,
) -> ConfigRun:
    """A finished run: ``rate`` calls/s, failing when due in ``fail``; the upstream got ``per_call`` requests a call."""
    run = ConfigRun(config, target=LoadTarget(config.key, _never))
    assert run.target is not None
    slot = 0.1
    received = [0] * round(duration / slot)
    for i in range(round(duration * rate)):
        due = i / rate
        failing = fail[0] <= due < fail[1]
        kind = "http_503" if failing else "ok"
        took = failed_latency if failing and failed_latency is not None else latency
        run.target.records.append((due, took, kind))
        weight = fault_per_call if failing and fault_per_call is not None else per_call
        received[int(due / slot + 1e-9)] += round(weight)
    run.upstream = {"slot": slot, "received": received, "total": sum(received)}
    run.breaker = list(breaker or [])
    return run


def _scenario_run(name: str, runs: list[ConfigRun], *, duration: float = 10.0, lag: float = 0.001) -> ScenarioRun:
    return ScenarioRun(SCENARIOS[name], duration, 10.0, runs, loop_lag_p99=lag, loop_lag_max=lag)


# -- figures of the fault phase ----------------------------------------------------------


def test_summarize_counts_the_fault_phase_separately() -> None:
    run = _config_run(BY_KEY["naive"], fail=(2.5, 5.5), per_call=1, fault_per_call=3, failed_latency=0.2)
    s = summarize(run, (2.5, 5.5))
    assert s.calls == 100
    assert s.fault_calls == 30
    assert s.fault_upstream == 90
    assert s.fault_load == 3.0
    assert s.fault_p99 == 0.2
    assert s.amplification == pytest.approx(1.6)
    # Without the window, no fault-phase figures.
    assert math.isnan(summarize(run).fault_load)


# -- the headline ----------------------------------------------------------------------------


def _summary(label: str, **figures: float) -> Summary:
    s = Summary(label, calls=1000, ok=round(figures.pop("success", 1.0) * 1000))
    for name, value in figures.items():
        setattr(s, name, value)
    return s


def test_headline_states_gains_in_numbers() -> None:
    plain = _summary("unprotected", success=0.70, p99=0.098, fault_calls=300, fault_upstream=300, fault_p99=0.098)
    judged = _summary(
        "resilient standard",
        success=0.994,
        p99=0.090,
        fault_calls=300,
        fault_upstream=162,
        failfast=250,
        failfast_p99=0.003,
    )
    assert headline("outage", judged, plain) == (
        "resilient standard against unprotected: cut the load on the dead upstream by 46%, "
        "failed fast in 3.0 ms instead of waiting 98 ms, kept 99.4% of calls succeeding against 70.0%."
    )


def test_headline_says_what_resilience_cost() -> None:
    plain = _summary("unprotected", success=0.807, p99=0.138, fault_calls=700, fault_upstream=700)
    judged = _summary("resilient standard", success=0.953, p99=3.12, fault_calls=700, fault_upstream=826)
    assert headline("brownout", judged, plain) == (
        "resilient standard against unprotected: kept 95.3% of calls succeeding against 80.7%; "
        "but 18% more load on the failing upstream, a p99 of 3.12 s against 138 ms."
    )
    worse = _summary("resilient standard", success=0.243, p99=2.57, fault_calls=300, fault_upstream=300)
    assert headline("outage", worse, plain).endswith(
        "bought nothing here: only 24.3% of calls succeeded against 80.7%, a p99 of 2.57 s against 138 ms."
    )


def test_headline_ignores_noise_and_falls_back_to_the_whole_run() -> None:
    plain = _summary("unprotected", success=1.0, p99=1.58, upstream=1000)
    judged = _summary("resilient standard", success=0.998, p99=1.56, upstream=1010)
    assert headline("slow-tail", judged, plain) == (
        "resilient standard against unprotected: no difference (success 99.8%, p99 1.56 s)."
    )
    # No fault-phase figures: the whole run's load.
    plain.upstream, judged.upstream, judged.p99 = 1000, 500, 0.1
    assert headline("slow-tail", judged, plain) == (
        "resilient standard against unprotected: cut the load on the upstream by 50%, "
        "cut the p99 from 1.58 s to 100 ms."
    )


def test_headlines_of_a_run_judge_the_zero_config_client_against_plain() -> None:
    runs = [
        _config_run(BY_KEY["plain"], fail=(2.5, 5.5)),
        _config_run(BY_KEY["naive"], fail=(2.5, 5.5), fault_per_call=3),
        _config_run(BY_KEY["standard"], fail=(3.0, 3.5), fault_per_call=0),
    ]
    # The standard row fails (and sends nothing) for 0.5 s of the 3 s fault only: 5 of 30 calls spared.
    line = headlines(_scenario_run("outage", runs))
    assert line.startswith("resilient standard against unprotected: cut the load on the dead upstream by 17%")
    assert "kept 95.0% of calls succeeding against 70.0%" in line
    assert headlines(_scenario_run("outage", runs[1:])) == ""


# -- targets -----------------------------------------------------------------------------------


def test_goals_are_issue_16s_targets() -> None:
    table = {(g.scenario, g.measure, g.config): (g.limit, g.against, g.scale, g.offset) for g in GOALS}
    nan = math.nan
    expected = {
        ("outage", "success", "standard"): (nan, ("plain", "tenacity-aiobreaker", "pyresilience"), 1.0, -0.02),
        ("outage", "fault_load", "standard"): (0.75, (), 1.0, 0.0),
        ("outage", "p99", "standard"): (0.100, (), 1.0, 0.0),
        ("brownout", "success", "standard"): (0.985, (), 1.0, 0.0),
        ("brownout", "load", "standard"): (1.45, (), 1.0, 0.0),
        ("brownout", "p99", "standard"): (0.500, (), 1.0, 0.0),
        ("slow-tail", "p99", "standard"): (nan, ("plain",), 1.05, 0.0),
        ("rate-limited", "success", "standard"): (nan, ("plain",), 1.0, 0.0),
        ("rate-limited", "load", "standard"): (1.05, (), 1.0, 0.0),
        ("overload", "success", "standard"): (nan, ("plain",), 1.0, -0.02),
        ("overload", "load", "standard"): (1.10, (), 1.0, 0.0),
        ("overload", "p99", "standard"): (nan, ("plain",), 1.5, 0.0),
        # Issue 19's: the hedging pipeline on the slow tail.
        ("slow-tail", "p99", "hedging"): (0.100, (), 1.0, 0.0),
        ("slow-tail", "load", "hedging"): (1.10, (), 1.0, 0.0),
        ("slow-tail", "success", "hedging"): (1.0, (), 1.0, 0.0),
    }
    assert table.keys() == expected.keys()
    assert len(GOALS) == len(expected)
    for key, (limit, *rest) in expected.items():
        assert table[key][1:] == tuple(rest), key
        assert (math.isnan(limit) and math.isnan(table[key][0])) or table[key][0] == limit, key
    assert {g.scenario for g in GOALS} == set(SCENARIOS)
    assert {g.measure for g in GOALS} <= MEASURES.keys()
    # A relative goal has no absolute limit, and the other way round.
    assert all(bool(g.against) == math.isnan(g.limit) for g in GOALS)


def test_relative_targets_take_the_best_reference_of_the_same_run() -> None:
    rows = {
        "plain": _summary("unprotected", success=0.70, p99=0.1),
        "naive": _summary("naive retries", success=0.72, p99=0.2),
        "standard": _summary("resilient standard", success=0.705, p99=0.09),
    }
    target = Goal("outage", "success", against=("plain", "naive"), offset=-0.02).check(rows)
    assert target is not None
    assert target.limit == pytest.approx(0.70)
    assert target.met
    assert target.describe() == "success 70.5% (target >= 70.0%: best of naive retries 72.0% - 2.0%)"
    # Lower is better for a latency: the best reference is the lowest p99.
    p99 = Goal("overload", "p99", against=("plain", "naive"), scale=1.5).check(rows)
    assert p99 is not None
    assert p99.limit == pytest.approx(0.150)
    assert p99.describe() == "p99 90 ms (target <= 150 ms: best of unprotected 100 ms x 1.5)"
    rows["standard"].ok = 600
    missed = Goal("outage", "success", against=("plain", "naive"), offset=-0.02).check(rows)
    assert missed is not None
    assert missed.verdict == "missed"
    # Nothing to judge, or nothing to judge against: no target.
    assert Goal("outage", "success", against=("microsoft",)).check(rows) is None
    assert Goal("outage", "success", 0.9, config="budget").check(rows) is None


def test_check_targets_marks_a_lagging_run_inconclusive_not_missed() -> None:
    runs = [
        _config_run(BY_KEY["plain"], fail=(1.5, 8.5), latency=0.02),
        _config_run(BY_KEY["standard"], fail=(1.5, 8.5), latency=0.02, per_call=2),
    ]
    calm = check_targets([_scenario_run("brownout", runs)])
    assert [(t.what, t.verdict) for t in calm] == [("success", "missed"), ("load", "missed"), ("p99", "met")]
    assert not inconclusive(_scenario_run("brownout", runs, lag=LAG_LIMIT))
    lagging = _scenario_run("brownout", runs, lag=0.080)
    assert inconclusive(lagging)
    assert {t.verdict for t in check_targets([lagging])} == {"inconclusive"}
    hint = rerun_hint(lagging)
    assert "p99 80 ms > 50 ms" in hint
    assert "--rate 5)" in hint  # half the rate of the run (10)
    assert "quieter machine" in hint
    lagging.rate = 200
    assert "--rate 100)" in rerun_hint(lagging)


def test_check_targets_judges_only_the_scenarios_that_ran() -> None:
    runs = [
        _config_run(BY_KEY["plain"], fail=(2.5, 5.5)),
        _config_run(BY_KEY["standard"], fail=(2.5, 5.5), fault_per_call=0, failed_latency=0.002),
    ]
    targets = check_targets([_scenario_run("outage", runs)])
    assert [t.what for t in targets] == ["success", "load during the fault", "p99"]
    assert all(t.scenario == "outage" and t.config == "resilient standard" for t in targets)
    load = targets[1]
    assert load.value == 0.0
    assert load.met
    # Plain got 70%: the standard row's 70% meets "best of plain - 0.02"; naive did not run.
    assert targets[0].basis == "unprotected 70.0% - 2.0%"
    assert targets[0].met


def _render(console_width: int, renderable: object) -> list[str]:
    console = Console(file=io.StringIO(), width=console_width, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


def _strip(lines: list[str]) -> list[str]:
    return [re.sub(r"\s+$", "", line) for line in lines]


# -- the terminal ------------------------------------------------------------------------------

_COLUMNS = ("configuration", "calls", "in flight", "success", "last 1.5 s", "breaker")


def _live_run(name: str = "outage", *, inflight: int = 12) -> ScenarioRun:
    runs = [_config_run(c, duration=3.0) for c in CONFIGS]
    for run in runs:
        assert run.target is not None
        run.target.inflight = inflight
        run.target.started = len(run.target.records)
    runs[2].breaker = [(1.0, "open"), (2.0, "half_open")]
    scenario_run = _scenario_run(name, runs, duration=15.0)
    scenario_run.grace = 6.0
    scenario_run.lag.extend([0.002, 0.003])
    return scenario_run


def _progress_at(width: int, scenario_run: ScenarioRun, elapsed: float) -> list[str]:
    from resilient.demo import _Progress

    progress = _Progress(5, plain=True)
    progress.index = 1
    progress.console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    captured: list[object] = []
    progress.live = type("FakeLive", (), {"update": lambda self, r: captured.append(r)})()
    progress.tick(scenario_run, elapsed)
    progress.console.print(captured[-1])
    return progress.console.file.getvalue().splitlines()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("width", [80, 100, 140])
def test_live_view_keeps_bar_header_and_labels_apart_at_common_widths(width: int) -> None:
    lines = _progress_at(width, _live_run(), 3.0)
    assert all(len(line) <= width for line in lines)
    bar = next(i for i, line in enumerate(lines) if "━" in line)
    header = next(i for i, line in enumerate(lines) if line.startswith("configuration"))
    # The bar has its own line, and a blank line separates it from the table.
    assert header > bar + 1
    assert not lines[bar + 1].strip()
    assert lines[bar].rstrip().endswith("20%")
    # Every column keeps its full label, in order.
    positions = [lines[header].find(col) for col in _COLUMNS]
    assert -1 not in positions, lines[header]
    assert positions == sorted(positions)
    assert "[1/5] Outage" in lines[0]
    assert "3.0 / 15 s" in lines[0]
    rows = lines[header + 1 :]
    assert [r.split("  ")[0] for r in rows if r.strip()] == [c.label for c in CONFIGS]
    assert "half-open" in rows[2]


@pytest.mark.parametrize("width", [80, 100, 140])
def test_live_view_says_it_is_draining_during_the_grace(width: int) -> None:
    lines = _progress_at(width, _live_run("rate-limited", inflight=7), 17.5)
    assert all(len(line) <= width for line in lines)
    head = " ".join(lines[:2])
    assert f"draining ({len(CONFIGS) * 7} in flight)" in head  # every configuration has 7
    assert "2.5 / 6 s of grace" in head
    assert next(line for line in lines if "━" in line).rstrip().endswith("100%")


def test_plain_progress_lines_fit_100_columns_and_say_when_draining() -> None:
    from resilient.demo import _Progress

    scenario_run = _live_run("rate-limited", inflight=3)
    progress = _Progress(1, plain=True)
    rows = [(c.label, 150, 3, 0.5, 0.5, "-") for c in CONFIGS]
    during = _Progress._plain_line(scenario_run, 3.0, rows)
    assert during.startswith("  rate-limited  3.0/15 s: unprotected ok 50% | naive retries ok 50%")
    assert all(len(line) <= 100 for line in during.splitlines())
    # Every configuration is there, none split across lines.
    for c in CONFIGS:
        assert sum(line.count(f"{c.label} ok 50%") for line in during.splitlines()) == 1
    draining = _Progress._plain_line(scenario_run, 16.0, rows)
    assert draining.startswith(f"  rate-limited draining ({len(CONFIGS) * 3} in flight), 1.0/6 s of grace: ")
    assert all(len(line) <= 100 for line in draining.splitlines())
    # A lagging loop starts the grace late: never more grace shown than there is.
    assert "6.0/6 s of grace" in _Progress._plain_line(scenario_run, 30.0, rows)
    assert progress.live is None


def _finished(lag: float = 0.002) -> list[ScenarioRun]:
    outage = [
        _config_run(BY_KEY["plain"], fail=(2.5, 5.5)),
        _config_run(BY_KEY["naive"], fail=(2.5, 5.5), fault_per_call=3),
        _config_run(BY_KEY["standard"], fail=(2.5, 5.5), fault_per_call=0, breaker=[(2.6, "open"), (5.6, "closed")]),
        ConfigRun(BY_KEY["microsoft"], note="resilient.httpx is not available (a reason long enough to wrap)"),
    ]
    slow = [_config_run(BY_KEY[k], latency=0.02) for k in ("plain", "naive", "standard")]
    return [_scenario_run("outage", outage), _scenario_run("slow-tail", slow, lag=lag)]


def test_plain_summary_opens_each_scenario_with_its_headline_within_100_columns() -> None:
    from resilient.demo.report import terminal_table

    text = terminal_table(_finished())
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    blocks = text.split("\n\n")
    assert blocks[0].splitlines()[0].startswith("Outage (load-generator lag p99")
    assert blocks[0].splitlines()[1].startswith("  resilient standard against unprotected: ")
    assert "ampl." in blocks[0].splitlines()[2]
    assert "Microsoft preset: skipped: resilient.httpx is not available" in blocks[0]
    assert "target met: resilient standard load during the fault 0.00x (target <= 0.75x)" in blocks[0]
    assert (
        blocks[1].splitlines()[1]
        == "  resilient standard against unprotected: no difference (success 100.0%, p99 20 ms)."
    )
    assert blocks[-1].startswith("targets: ")


def test_summary_marks_a_lagging_scenario_inconclusive_and_says_how_to_rerun() -> None:
    from resilient.demo.report import terminal_table

    text = terminal_table(_finished(lag=0.120))
    assert "Slow tail (load-generator lag p99 120 ms: INCONCLUSIVE)" in text
    assert "target inconclusive: resilient standard p99" in text
    assert "MISSED: resilient standard p99" not in text
    tally = text.split("\n\n")[-1]
    assert "1 inconclusive" in tally
    assert "rerun with a lower --rate (e.g. --rate 5)" in tally.replace("\n  ", " ")
    assert "quieter machine" in tally.replace("\n  ", " ")


@pytest.mark.parametrize("width", [80, 100, 140])
def test_rich_summary_fits_the_terminal(width: int) -> None:
    from resilient.demo.report import terminal_table

    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    assert terminal_table(_finished(lag=0.120), rich_console=console) == ""
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert all(len(line) <= width for line in lines)
    text = "\n".join(lines)
    assert "Outage (load-generator lag p99" in text
    assert "resilient standard against unprotected:" in text
    assert "INCONCLUSIVE" in text
    header = next(line for line in lines if "configuration" in line)
    for col in ("success", "p50", "p99", "max", "ampl."):
        assert col in header
    assert ("what the policies did" in header) == (width >= 110)


# -- the HTML report ----------------------------------------------------------------------------

_OLD_COLOURS = ("#2563eb", "#0891b2", "#059669", "#16a34a", "#dc2626", "#d97706", "#9333ea", "#f59e0b")


def _report(lag: float = 0.002) -> str:
    from resilient.demo.report import render_html

    return render_html(_finished(lag), rate=10, duration=10, seed=0, wall=1)


def _sections(doc: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', doc, flags=re.S))


def _attrs(tag: str) -> dict[str, str]:
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag))


def test_report_colours_are_okabe_ito_one_per_configuration_everywhere() -> None:
    from resilient.demo.report import COLORS, OKABE_ITO

    doc = _report()
    palette = {c.upper() for c in OKABE_ITO.values()}
    assert set(COLORS.values()) <= set(OKABE_ITO.values())
    assert len(set(COLORS.values())) == len(COLORS)
    seen: dict[str, set[str]] = {}
    for tag in re.findall(r"<(?:polyline|circle|rect)\b[^>]*data-series=[^>]*>", doc):
        a = _attrs(tag)
        seen.setdefault(html_unescape(a["data-series"]), set()).add((a.get("stroke") or a["fill"]).upper())
    # Every configuration that ran is drawn, in exactly one colour, and no two share one.
    assert set(seen) == {"unprotected", "naive retries", "resilient standard"}
    assert all(len(colours) == 1 for colours in seen.values()), seen
    chosen = {label: next(iter(colours)) for label, colours in seen.items()}
    assert len(set(chosen.values())) == len(chosen)
    assert set(chosen.values()) <= palette
    assert chosen["unprotected"] == COLORS["plain"].upper()
    assert chosen["resilient standard"] == COLORS["standard"].upper()
    # The tables' swatches and the legend use the same colours.
    for label, colour in chosen.items():
        assert re.search(rf'background:{colour}"></i>{re.escape(label)}</td>', doc, flags=re.I), label
        assert re.search(rf'border-color:{colour}"></i>{re.escape(label)}</span>', doc, flags=re.I), label
    # None of the old near-identical blues and greens is left, nor a green or red breaker state.
    lowered = doc.lower()
    assert not [c for c in _OLD_COLOURS if c in lowered]


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_report_charts_of_a_scenario_share_one_time_axis() -> None:
    doc = _report()
    for name, body in _sections(doc).items():
        svgs = [_attrs(tag) for tag in re.findall(r"<svg\b[^>]*>", body)]
        assert len(svgs) == 5, name  # four line charts and the breaker strips
        axes = {(s["width"], s["data-x0"], s["data-x1"], s["data-t0"], s["data-t1"]) for s in svgs}
        assert len(axes) == 1, (name, axes)
        width, x0, x1, t0, t1 = (float(v) for v in axes.pop())
        assert (t0, t1) == (0.0, 10.0)
        assert 0 < x0 < x1 < width
        # The fault band starts at the same pixel in every chart, where the axis puts its start.
        start = 2.5 if name == "outage" else 1.5
        bands = [float(_attrs(t)["x"]) for t in re.findall(r'<rect\b[^>]*class="fault"[^>]*>', body)]
        assert len(bands) == 5
        assert bands == pytest.approx([x0 + start / t1 * (x1 - x0)] * 5, abs=0.06)
    # The breaker opened at 2.6 s: its bar starts on the same pixel column as 2.6 s in the charts above.
    outage = _sections(doc)["outage"]
    bar = next(_attrs(t) for t in re.findall(r"<rect\b[^>]*>", outage) if 'data-state="open"' in t)
    svg = _attrs(re.findall(r"<svg\b[^>]*>", outage)[0])
    x0, x1 = float(svg["data-x0"]), float(svg["data-x1"])
    assert float(bar["x"]) == pytest.approx(x0 + 2.6 / 10 * (x1 - x0), abs=0.06)
    assert float(bar["width"]) == pytest.approx(3.0 / 10 * (x1 - x0), abs=0.12)


def test_report_opens_every_scenario_with_what_resilience_bought() -> None:
    doc = _report()
    for name, body in _sections(doc).items():
        first = re.sub(r"^<h2>[^<]*</h2>", "", body)
        assert first.startswith('<p class="bought"><b>What resilience bought</b> · resilient standard against '), name
    assert "cut the load on the dead upstream by 100%" in _sections(doc)["outage"]


def test_report_marks_a_lagging_scenario_inconclusive_with_how_to_rerun() -> None:
    calm, lagging = _report(), _report(lag=0.2)
    assert "Inconclusive" not in calm
    slow = _sections(lagging)["slow-tail"]
    assert slow.split("</h2>", 1)[1].startswith('<p class="banner"><b>Inconclusive.</b>')
    assert "--rate 5" in slow
    assert "quieter machine" in slow
    assert '<span class="inconclusive">inconclusive</span>' in slow
    assert '<span class="missed">' not in slow
    assert "Inconclusive: Slow tail." in lagging.split("<h2>", 1)[0]
    assert "Inconclusive" not in _sections(lagging)["outage"]


def test_palette_gives_unknown_configurations_unused_colours() -> None:
    from resilient.demo.report import COLORS, OKABE_ITO, palette

    keys = ["plain", "naive", "tenacity-aiobreaker", "pyresilience", "standard"]
    colours = palette(keys)
    assert list(colours) == keys
    assert len(set(colours.values())) == len(keys)
    assert set(colours.values()) <= set(OKABE_ITO.values())
    assert colours["standard"] == COLORS["standard"]
    many = palette([f"c{i}" for i in range(12)])
    assert len(set(list(many.values())[:7])) == 7  # seven spare colours, then grey


def test_plain_progress_print_wraps_with_its_indent(capsys: pytest.CaptureFixture[str]) -> None:
    from resilient.demo import _Progress

    _Progress(1, plain=True).print("resilient standard against unprotected: " + "kept 99.4% of calls, " * 12, indent=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 2
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].startswith("  resilient standard")
    assert all(line.startswith("    ") for line in lines[1:])


def test_report_lists_breaker_changes_after_the_load_stopped() -> None:
    from resilient.demo.report import render_html

    runs = _finished()
    runs[1].runs[2].breaker = [(12.5, "open")]  # the slow-tail run lasted 10 s
    doc = render_html(runs, rate=10, duration=10, seed=0, wall=1)
    slow = _sections(doc)["slow-tail"]
    assert "Breaker changes after the load stopped (not drawn): resilient standard: open at 12.5 s." in slow
    assert "after the load stopped" not in _sections(doc)["outage"]
    assert 'cut off by <span class="nw">--grace</span>' not in doc  # nothing was cut off here
