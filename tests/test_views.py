"""A sweep's saved view of the MLflow UI, written by ``runner.tracking.compat.write_sweep_view``.

The fast tests check the tag against what MLflow's UI itself writes (a view saved by hand in the
UI, decoded) and what the code builds from it. The browser tests log a real 6-job sweep to a
SQLite store, serve it with ``mlflow server`` on a free loopback port, write the sweep's view, open
its link in Debian's headless Chromium (driven by Playwright) and read what a person sees, each
value compared with what ``MlflowClient`` reads back from the store:

- the runs table: the swept params and the objective are the first columns after the run's name
  and start time, the sweep's jobs sit under one group row for the sweep (its best objective
  shown on it), sorted by the objective, lowest first;
- the chart view: its first chart draws the objective over epochs, one curve per job, exactly the
  logged history; then the objective against each swept param; the layer statistics come last.

With ``BPRUN_SCREENSHOT_DIR`` set, the table and the charts are saved there as
``sweep-view-runs.png`` and ``sweep-view-charts.png`` (docs/images/ has a pair).

The browser tests need ``/usr/bin/chromium`` (Debian's package; .ci/run installs it); Playwright's
own browser download is never used.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from support import START_TIMEOUT, Background, cli, wait_until

from runner.tracking.compat import (
    MAX_SAVED_VIEW_CHARS,
    SAVED_VIEW_MLFLOW_VERSIONS,
    SAVED_VIEW_TAG_PREFIX,
    decode_view_state,
    encode_view_state,
    saved_view_key,
    saved_view_link,
    sweep_view_state,
    write_sweep_view,
)

CHROMIUM = Path("/usr/bin/chromium")
EXPERIMENT = "backprop-runner"
PARENT_TAG = "mlflow.parentRunId"
SWEPT = ["optimizer.lr", "seed"]
SWEEP = ("-m", "dataset=moons", "optimizer.lr=0.1,1,3", "seed=0,1", "trainer.epochs=30")
JOBS = 6
OBJECTIVE, TWIN = "val_mse", "train_mse"
# What the sweep's runs log them as (runner.names.logged_metric_name).
LOGGED_OBJECTIVE, LOGGED_TWIN = "1_loss/val_mse", "1_loss/train_mse"
LAYER_STATISTICS = ["weight_norm", "bias_norm", "grad_weight_norm", "grad_bias_norm", "update_ratio"]
# Every wait in the browser: a cold page loads several MB of JavaScript on a busy 2-core machine.
UI_TIMEOUT_MS = 120_000
VIEWPORT = {"width": 1400, "height": 900}
# MLflow opens its assistant panel over the page on a browser's first visit (test_dashboard.py).
ASSISTANT_SEEN = "try { localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true') } catch {}"
KEY = re.compile(r"\d{13}[0-9a-z]{8}")

# The state of a view saved by hand in MLflow 3.17.2's UI (Views > Save as new view): table sorted
# by val_mse, optimizer.lr and seed moved first, a val_mse + train_mse line chart, a parallel
# coordinates chart and a scatter chart added, the Model metrics section dragged above layer1.
UI_SAVED_STATE = (
    "deflate;eJztWW1z2kgM/isZf870bCAE841S2mOOpB3gep3pZMhiy/bC2oZ9ITEZ/nu12BjzVuamXI8P/oiklZ7VI63F7pshgHAn"
    "+EiZBG40DePWiLkL/H3yFyT4OwTJqSPePS8IG4UCnrcGLeEYTckV3BpCEi6HNARc0er10IZRD5zEYZB7bjmSLgBVLpFEgBQbzfen"
    "WyOMXWBfgQsaR9sVjN30VSRwjQAGjgS3HTMVoqT53ZgRTkIEFs8kDekS+DvGNbpjiHOZ5IRGG+nGgwBwnw1E4ay9f9bb0xGIxFVj"
    "JQFtEMfNIwnX67iKPhAJrch9BCG7kRcXnO3D2Q3yb+C5ihOJ+dgi+4e6MsDNv52A1rRs8yi8pnVnnoLYtExzH2YqO4S6Jy/ATTU5"
    "5GbDXK2RiD+p60L0gPwiox+7/cFwZJmj/t+PA0NvK8TAgDtoB1hBmtc3Qynqoq11b9frdbNh2fWKSeZWMp+QCa6RyUy76nUfOykX"
    "oh2rSA7jdupMQ9lgHGDRIJzugT+AeHk3jyKdZiwtrCyj6REmsJap+AQR4D60LC1vl4oZI4lOMjoaUyJGUczDnLm0VdACuPVHUc1o"
    "BIMwjmUQgcDdIbDX1isVA4cwGKYb0TaE6xo/JuQk8lHwtspWpqGEhFmhK75pzUMBCuqSrXUKciPrvM44gsG0iLT3qI9o4bOSjGID"
    "5nlQAj6xeEzYN7LxlGYjV/Ty3dHIT7Wr2+P8TVXD9hpyfg38+Zy4ozMkHtiUTGaZN+/HszFMo6th8gWoH8hzXO5alWxm2fc9FdYm"
    "lftrYFPNcDKA0foLcpzJPYuSxSzrwWKa2PfKuQYWz7Zj2YlHObTikAUTQi7FoVo2Qn7P/YtPOJVywjnGnxJjtWBzuAb+zk84lXLC"
    "OcmkPXbUYsHrV8PkmSO1Uk44P2HTc0jVG8cXm3B+hc1zE06lnHBOsJgE1QAst3INLJ5tx7ITdzm0TLNu27bwqvOpX73QlGrZcYO5"
    "01rknOMwkxWJyi60CunLM7e+W9zq8ysufQtXUmlZd9VatUG9sP7iTqwtlV9a/Vav1+n9Njo3yfqyvrjUpBWvNdfZROunfYZ36NXa"
    "IH5pMba+Zk5dnzqCluFyPqFy9rvL99gRlFYlcRzFiZPsnUIHyrJsMwoXnkcXC9++HgrTQ+aQvVReEpcRV5U1qsLiefP/EacPjxOd"
    "t6cq6dvc/k+WSU0wdi30HXbdVlqSZlmVinVnQtiwAlI8LAft1nDY6Z/k7eLf+Fe9Df3cOV0nZe8DX5g8HgxMdrJrXZjhUsOHzrDf"
    "bRur1VPx4THDeurpcQdzlJaQfsxkN9krqJEX2CbZVPRh/URe2MnZMj3VOoWr2Cx6eo1aDJv7vGDcwh+kYtzKfx13wVRU8+v2Nu4g"
    "wdYJj6X7l+JjESwovDxg0eia2ppibfeokOm7dcFBy3EwCpZKIdq2u3isZuB+JUyB6Oav2ak+oC50wplMdsW+XvMe9xEpxrKfutVJ"
    "5Grf+vzw86ZdL23HkUd9XeKHB8uRc+v0WbNa/QDYGpMU"
)


def layer_metrics(layers: int) -> list[str]:
    return [f"layer{layer}/{statistic}" for layer in range(1, layers + 1) for statistic in LAYER_STATISTICS]


# --- the tag, without a browser ----------------------------------------------------------------


def test_the_installed_mlflow_is_one_the_view_layout_was_checked_against() -> None:
    assert version("mlflow") in SAVED_VIEW_MLFLOW_VERSIONS, (
        f"MLflow {version('mlflow')} is installed but the saved view's layout was checked against "
        f"{SAVED_VIEW_MLFLOW_VERSIONS}: run these tests against it (the browser ones too), then add it"
    )


def test_the_ui_bundle_still_names_the_tag_and_the_link_parameter() -> None:
    import mlflow

    bundles = list((Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js").glob("main.*.js"))
    assert len(bundles) == 1, bundles
    text = bundles[0].read_text(errors="replace")
    assert f'"{SAVED_VIEW_TAG_PREFIX}"' in text
    assert '"viewStateShareKey"' in text


def test_keys_look_like_the_uis_own_and_never_repeat() -> None:
    keys = {saved_view_key() for _ in range(2000)}
    assert len(keys) == 2000
    assert all(KEY.fullmatch(key) for key in keys), sorted(keys)[:3]
    assert saved_view_key(1796654253765).startswith("1796654253765")


def test_a_view_the_ui_saved_decodes_and_our_encoding_round_trips() -> None:
    envelope = json.dumps({"name": "sweep by hand", "createdAt": 1, "updatedAt": 1, "state": "".join(UI_SAVED_STATE)})
    state = decode_view_state(envelope)
    assert state["orderByKey"] == "metrics.`val_mse`" and state["orderByAsc"] is True
    assert state["columnOrder"][:4] == [
        "attributes.`Run Name`",
        "runDateAndNestInfo",
        "params.`optimizer.lr`",
        "params.`seed`",
    ]
    assert "runsExpanded" not in state  # the UI leaves it out of every view it saves
    first = next(chart for chart in state["compareRunCharts"] if chart["type"] == "LINE" and not chart["isGenerated"])
    assert first["selectedMetricKeys"] == ["val_mse", "train_mse"]
    assert [section["name"] for section in state["compareRunSections"]][:2] == ["Model metrics", "layer1"]

    ours = json.dumps({"name": "n", "createdAt": 1, "updatedAt": 1, "state": encode_view_state(state)})
    assert json.loads(ours)["state"].startswith("deflate;")
    assert decode_view_state(ours) == state


def test_a_sweep_view_puts_the_swept_params_and_the_objective_first() -> None:
    metrics = [TWIN, "train_accuracy", "val_accuracy", *layer_metrics(10)]
    state = sweep_view_state("0123abcd", SWEPT, OBJECTIVE, metrics)

    assert state["searchFilter"] == f"tags.`{PARENT_TAG}` = '0123abcd'"
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val_mse`", True)
    columns = ["params.`optimizer.lr`", "params.`seed`", "metrics.`val_mse`", "metrics.`train_mse`"]
    assert state["selectedColumns"] == columns
    assert state["columnOrder"] == ["attributes.`Run Name`", "runDateAndNestInfo", *columns, "duration"]
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": PARENT_TAG}]
    assert state["groupBy"]["aggregateFunction"] == "min"
    assert state["runsHiddenMode"] == "SHOW_ALL" and state["useGroupedValuesInCharts"] is False

    sections = state["compareRunSections"]
    assert [section["name"] for section in sections] == ["Model metrics"] + [f"layer{n}" for n in range(1, 11)]
    assert [section["display"] for section in sections] == [True] + [False] * 10
    assert state["isAccordionReordered"] is True
    charts = [chart for chart in state["compareRunCharts"] if not chart["deleted"]]
    assert charts[0]["type"] == "LINE" and charts[0]["selectedMetricKeys"] == [OBJECTIVE, TWIN]
    assert [(chart["xaxis"]["key"], chart["yaxis"]["key"]) for chart in charts[1:3]] == [
        ("optimizer.lr", OBJECTIVE),
        ("seed", OBJECTIVE),
    ]
    assert charts[3]["type"] == "PARALLEL" and charts[3]["selectedParams"] == SWEPT
    assert [chart["metricKey"] for chart in charts[4:6]] == ["train_accuracy", "val_accuracy"]
    # Every metric has a chart (a hidden one for the twin), or the UI would add its own.
    assert {chart.get("metricKey") for chart in state["compareRunCharts"]} >= {OBJECTIVE, *metrics}
    model = sections[0]["uuid"]
    assert all(chart["metricSectionId"] == model for chart in charts[:6])
    uuids = [chart["uuid"] for chart in state["compareRunCharts"]] + [section["uuid"] for section in sections]
    assert len(set(uuids)) == len(uuids) and all(KEY.fullmatch(uuid) for uuid in uuids)


def test_the_twin_of_a_prefixed_objective_keeps_its_prefix_and_the_accuracy_section_is_open() -> None:
    accuracy = ["2_accuracy/train_accuracy", "2_accuracy/val_accuracy"]
    state = sweep_view_state("0123abcd", SWEPT, "1_loss/val_mse", ["1_loss/train_mse", *accuracy, *layer_metrics(2)])
    assert state["compareRunCharts"][0]["selectedMetricKeys"] == ["1_loss/val_mse", "1_loss/train_mse"]
    assert state["selectedColumns"][-1] == "metrics.`1_loss/train_mse`"
    sections = state["compareRunSections"]
    assert [section["name"] for section in sections] == ["Model metrics", "2_accuracy", "layer1", "layer2"]
    assert [section["display"] for section in sections] == [True, True, False, False]


def test_writing_a_sweep_view_twice_replaces_it(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("views")
    link = write_sweep_view(client, experiment, "0123abcd", ["a", "b"], SWEPT, OBJECTIVE, [TWIN], name="lr sweep")
    assert link is not None
    again = write_sweep_view(client, experiment, "0123abcd", ["a", "b"], SWEPT, OBJECTIVE, [TWIN], name="LR sweep")
    assert again == link

    tags = {k: v for k, v in client.get_experiment(experiment).tags.items() if k.startswith(SAVED_VIEW_TAG_PREFIX)}
    assert len(tags) == 1
    [(tag, value)] = tags.items()
    key = tag.removeprefix(SAVED_VIEW_TAG_PREFIX)
    assert KEY.fullmatch(key)
    assert link == saved_view_link(experiment, key)
    assert link == (
        f"#/experiments/{experiment}/runs?viewStateShareKey={key}&compareRunsMode=TABLE&workflowType=machine_learning"
    )
    envelope = json.loads(value)
    assert list(envelope) == ["name", "createdAt", "updatedAt", "state"]
    assert envelope["name"] == "LR sweep" and envelope["updatedAt"] >= envelope["createdAt"]
    assert decode_view_state(value)["orderByKey"] == "metrics.`val_mse`"


def test_a_view_too_large_for_the_ui_is_refused(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("views")
    with pytest.raises(ValueError, match=str(MAX_SAVED_VIEW_CHARS)):
        write_sweep_view(client, experiment, "0123abcd", ["a"], SWEPT, OBJECTIVE, layer_metrics(400))
    assert not any(tag.startswith(SAVED_VIEW_TAG_PREFIX) for tag in client.get_experiment(experiment).tags)


# --- the view in a browser ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """A finished sweep as the store holds it."""

    folder: Path
    uri: str
    experiment_id: str
    parent: Any
    ranked: list[Any]  # the jobs, lowest final objective first
    metrics: list[str]  # every metric the jobs log but the objective


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    folder = tmp_path_factory.mktemp("views")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    finished = cli(*SWEEP, f"tracking.uri={uri}", cwd=folder / "work")
    assert finished.returncode == 0, finished.output

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [run for run in runs if PARENT_TAG not in run.data.tags]
    jobs = [run for run in runs if run.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(jobs) == JOBS and len(runs) == JOBS + 1, finished.output
    ranked = sorted(jobs, key=lambda run: run.data.metrics[LOGGED_OBJECTIVE])
    metrics = sorted({key for run in jobs for key in run.data.metrics} - {LOGGED_OBJECTIVE})
    return Sweep(folder, uri, experiment.experiment_id, parent, ranked, metrics)


@pytest.fixture(scope="module")
def server(sweep: Sweep) -> Iterator[str]:
    """``mlflow server`` on the sweep's store, on a free loopback port; its base URL."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    base = f"http://127.0.0.1:{port}"
    process = Background(
        "server",
        *("--backend-store-uri", sweep.uri, "--default-artifact-root", str(sweep.folder / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        cwd=sweep.folder,
        uri=None,
        label="mlflow-server",
        module="mlflow",
    )
    try:
        wait_until(lambda: healthy(base), START_TIMEOUT, "mlflow server answering /health", process, interval=0.2)
        yield base
    finally:
        process.kill_everything()


@pytest.fixture(scope="module")
def view(sweep: Sweep) -> str:
    """The sweep's view, written as bprun writes it; the link that opens it."""
    swept = json.loads(sweep.parent.data.tags["sweep.swept_keys"])
    assert swept == SWEPT
    jobs = [run.info.run_id for run in sweep.ranked]
    client = MlflowClient(sweep.uri)
    link = write_sweep_view(
        client, sweep.experiment_id, sweep.parent.info.run_id, jobs, swept, LOGGED_OBJECTIVE, sweep.metrics
    )
    assert link is not None
    return link


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright module is missing (pip install -e '.[test]')"
    )
    playwright = sync_api.sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser profile: nothing remembered from an earlier test."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(ASSISTANT_SEEN)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(UI_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def healthy(base: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/health", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("BPRUN_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def number(text: str) -> float:
    found = re.search(r"-?\d+(\.\d+)?(e-?\d+)?", text)
    assert found, text
    return float(found.group(0))


@pytest.mark.slow
def test_the_views_table_ranks_the_jobs_under_their_sweep(sweep: Sweep, server: str, view: str, page: Any) -> None:
    parent = sweep.parent.info.run_id
    group_id = f"tag.{PARENT_TAG}.{parent}"
    page.goto(f"{server}/{view}")
    # The run name is pinned to the left: its rows hold the names, in the order the table shows.
    names = page.locator(".ag-pinned-left-cols-container .ag-row")
    names.nth(JOBS).wait_for()

    rows = sorted(
        (int(row.get_attribute("row-index")), row.get_attribute("row-id"), row.inner_text()) for row in names.all()
    )
    assert [row_id for _, row_id, _ in rows] == [group_id] + [f"{group_id}.{run.info.run_id}" for run in sweep.ranked]
    assert f"Group: {parent}" in rows[0][2] and str(JOBS) in rows[0][2].split("\n")
    for (_, _, text), run in zip(rows[1:], sweep.ranked):
        assert run.info.run_name in text.split("\n")

    headers = sorted(
        (int(cell.get_attribute("aria-colindex")), cell.get_attribute("col-id"), cell.inner_text().strip())
        for cell in page.locator(".ag-header-row-column .ag-header-cell").all()
    )
    shown = [text for _, column, text in headers if text][:6]
    assert shown == ["Run Name", "Created", *SWEPT, LOGGED_OBJECTIVE, LOGGED_TWIN]

    # The values a person reads in the objective's column: the sweep's best on the group row.
    cells = page.locator(".ag-center-cols-container .ag-row").all()
    column = f"metrics.`{LOGGED_OBJECTIVE}`"
    read = sorted(
        (int(row.get_attribute("row-index")), number(row.locator(f'[col-id="{column}"]').inner_text())) for row in cells
    )
    values = [run.data.metrics[LOGGED_OBJECTIVE] for run in sweep.ranked]
    expected = [values[0], *values]
    assert [value for _, value in read] == pytest.approx(expected, rel=1e-6)
    screenshot(page, "sweep-view-runs.png")


@pytest.mark.slow
def test_the_views_first_chart_draws_the_objective_of_every_job(
    sweep: Sweep, server: str, view: str, page: Any
) -> None:
    client = MlflowClient(sweep.uri)
    page.goto(f"{server}/{view.replace('compareRunsMode=TABLE', 'compareRunsMode=CHART')}")
    cards = page.get_by_test_id("experiment-view-compare-runs-card")
    plot = cards.first.locator(".js-plotly-plot")
    plot.wait_for()
    # Plotly keeps what it draws on the chart's element: a trace with markers per curve.
    page.wait_for_function(
        "([element, metric, jobs]) => element.data && element.data.filter("
        "trace => trace.metricKey === metric && trace.mode === 'lines+markers').length === jobs",
        arg=[plot.element_handle(), LOGGED_OBJECTIVE, JOBS],
    )
    traces = plot.evaluate(
        "element => element.data.filter(trace => trace.mode === 'lines+markers').map(trace => "
        "({run: trace.uuid, metric: trace.metricKey, x: Array.from(trace.x), y: Array.from(trace.y)}))"
    )
    objective = {trace["run"]: trace for trace in traces if trace["metric"] == LOGGED_OBJECTIVE}
    assert sorted(objective) == sorted(run.info.run_id for run in sweep.ranked)
    for run in sweep.ranked:
        history = sorted(client.get_metric_history(run.info.run_id, LOGGED_OBJECTIVE), key=lambda metric: metric.step)
        assert objective[run.info.run_id]["x"] == [metric.step for metric in history]
        assert objective[run.info.run_id]["y"] == pytest.approx([metric.value for metric in history], rel=1e-12)
        # The legend names each job's curve as a person reads it.
        assert cards.first.get_by_text(f"{run.info.run_name} ({LOGGED_OBJECTIVE})", exact=True).count() == 1
    assert {trace["metric"] for trace in traces} == {LOGGED_OBJECTIVE, LOGGED_TWIN}

    titles = [card.locator("h4").first.inner_text() for card in cards.all()[:4]]
    scatter = [f"{key} vs. {LOGGED_OBJECTIVE}" for key in SWEPT]
    assert titles == [f"{LOGGED_OBJECTIVE} vs {LOGGED_TWIN}", *scatter, "Parallel Coordinates"]
    sections = [
        header.inner_text().split("\n")[0]
        for header in page.get_by_test_id("experiment-view-compare-runs-section-header").all()
    ]
    assert sections == ["Model metrics", "2_accuracy", "layer1", "layer2"]  # the layer statistics last
    screenshot(page, "sweep-view-charts.png")
