"""The MLflow UI shows what bprun logged: a real sweep logged over http to a team's server
(``bprun-server`` on a PostgreSQL store, on loopback), and Debian's headless Chromium driven by
Playwright, reading what a person would see.

Proven, each value compared with what ``MlflowClient`` reads back from the same store:

- the experiment page opens on the runs table (no mode toggle clicked): the sweep's parent run
  with its name, the count of matching runs, and, once the parent is expanded in the table, its
  two nested child runs with their names (hidden while the parent is collapsed);
- a child's run page opens its model metrics tab on the loss: the first section is ``1_loss``,
  its first chart ``train_mse``, plotting exactly the logged history (steps and values), the
  layers' sections after it;
- a child's artifacts show ``plots/learning_curves.png`` as an image of the PNG's own size,
  uploaded by the job and served by the tracking server (``mlflow-artifacts:``).

MLflow 3.17's UI picks GenAI or model training from a switch of its own (the ``workflowType``
URL parameter, else the browser's last choice, else GenAI) and no longer from the experiment's
``mlflow.experimentKind`` tag, so the bare experiment URL opens on GenAI traces; the pages are
opened with ``?workflowType=machine_learning``, the URL that the UI's own switch navigates to.

With ``BPRUN_SCREENSHOT_DIR`` set, the runs table (children expanded) and the ``train_mse`` chart
are saved there as ``dashboard-runs.png`` and ``dashboard-metric.png`` (docs/images/ has a pair).

Needs ``/usr/bin/chromium`` (Debian's package; .ci/run installs it) and the ``playwright``
module of the test extra; Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from postgres import postgres_uri  # noqa: F401  (the session's PostgreSQL database, a fixture)
from support import START_TIMEOUT, TRAIN_MSE, Background, cli, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright module is missing (pip install -e '.[test]')"
)

EXPERIMENT = "backprop-runner"
PARENT_TAG = "mlflow.parentRunId"
SWEEP = ("-m", "seed=0,1", "trainer.epochs=50")
CHILDREN = 2
PLOT = "plots/learning_curves.png"
MODEL_TRAINING = "workflowType=machine_learning"
# Every wait in the browser: a cold page loads several MB of JavaScript and a busy 2-core machine
# may be running other tests beside this one.
UI_TIMEOUT_MS = 120_000
VIEWPORT = {"width": 1280, "height": 800}
# MLflow opens its assistant panel over a third of the page on a browser's first visit to a local
# server, then remembers that it did (in this key of localStorage); marking it done leaves the
# pages as a returning person sees them. Should the key change, the panel shows and nothing fails.
# (about:blank has no localStorage, hence the try.)
ASSISTANT_SEEN = "try { localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true') } catch {}"


@dataclass(frozen=True)
class Sweep:
    """A finished sweep as the store holds it."""

    folder: Path
    uri: str
    experiment_id: str
    parent: Any
    children: list[Any]  # oldest first
    run_count: int  # every run of the experiment

    @property
    def child(self) -> Any:
        return self.children[0]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(postgres_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """A team's server as docs/team.md starts it: ``bprun-server`` on a PostgreSQL store, on a
    free loopback port; its base URL."""
    folder = tmp_path_factory.mktemp("dashboard-server")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    process = Background(
        "--store",
        postgres_uri,
        "--artifacts",
        str(folder / "artifacts"),
        "--port",
        str(port),
        "--workers",
        "1",
        cwd=folder,
        uri=None,
        label="server",
        module="runner.commands.server",
    )
    try:
        wait_until(
            lambda: "bprun-server: serving" in process.output_so_far(),
            START_TIMEOUT,
            "bprun-server serving",
            process,
            interval=0.2,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill_everything()


@pytest.fixture(scope="module")
def sweep(server: str, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """A sweep logged over http to the server, artifacts uploaded through it."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("dashboard")
    finished = cli(*SWEEP, "tracking=server", f"tracking.uri={server}", cwd=folder)
    assert finished.returncode == 0, finished.output

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 1, [(run.info.run_name, run.data.tags.get(PARENT_TAG)) for run in runs]
    parent = parents[0]
    children = sorted(
        (run for run in runs if run.data.tags.get(PARENT_TAG) == parent.info.run_id),
        key=lambda run: run.info.start_time,
    )
    assert len(children) == CHILDREN and len(runs) == CHILDREN + 1, finished.output
    return Sweep(folder, server, experiment.experiment_id, parent, children, len(runs))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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


# --- helpers -----------------------------------------------------------------------------------


def screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("BPRUN_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def run_link(page: Any, sweep: Sweep, run: Any) -> Any:
    """The link to ``run`` in the runs table (the table links each run by its id)."""
    return page.locator(f'a[href="#/experiments/{sweep.experiment_id}/runs/{run.info.run_id}"]')


def run_page(base: str, sweep: Sweep, run: Any, tab: str = "") -> str:
    return f"{base}/#/experiments/{sweep.experiment_id}/runs/{run.info.run_id}{tab}?{MODEL_TRAINING}"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


# --- tests -------------------------------------------------------------------------------------


def test_the_dashboard_opens_on_the_runs_table_with_nested_children(sweep: Sweep, server: str, page: Any) -> None:
    from runner.tracking.destination import where_to_look

    # The page bprun prints for a sweep on a server, as a person would open it.
    page.goto(where_to_look(server, sweep.experiment_id))

    parent_link = run_link(page, sweep, sweep.parent)
    parent_link.wait_for()
    # bprun names a parent after its sweep ("seed sweep (2 jobs)"): the word is in it wherever.
    assert "sweep" in sweep.parent.info.run_name, sweep.parent.info.run_name
    assert parent_link.inner_text().strip() == sweep.parent.info.run_name
    page.get_by_text(f"{sweep.run_count} matching runs").wait_for()
    # Collapsed, the parent stands for its sweep: the children are not in the table yet.
    for child in sweep.children:
        assert run_link(page, sweep, child).count() == 0

    # The expander is the one button in the parent's name cell (it has no label of its own).
    parent_row = page.locator(".ag-row", has=parent_link)
    parent_row.locator('[role="gridcell"][col-id*="Run Name"] button').click()

    shown = []
    for child in sweep.children:
        link = run_link(page, sweep, child)
        link.wait_for()
        shown.append(link.inner_text().strip())
    assert shown == [child.info.run_name for child in sweep.children]
    screenshot(page, "dashboard-runs.png")


def test_a_child_run_page_opens_on_its_train_mse_chart(sweep: Sweep, server: str, page: Any) -> None:
    from mlflow.tracking import MlflowClient

    history = sorted(
        MlflowClient(sweep.uri).get_metric_history(sweep.child.info.run_id, TRAIN_MSE), key=lambda metric: metric.step
    )
    assert history

    page.goto(run_page(server, sweep, sweep.child))
    page.get_by_text(sweep.child.info.run_id).first.wait_for()  # the Overview tab names the run
    page.get_by_role("tab", name="Model metrics").click()
    # The first section is the loss, before the layers' statistics; its first chart is train_mse,
    # the first thing a person sees, without scrolling or searching.
    headers = page.get_by_test_id("experiment-view-compare-runs-section-header")
    headers.first.wait_for()
    sections = [header.inner_text().split("\n")[0] for header in headers.all()]
    assert sections[0].startswith("1_loss") and sections[-1].startswith("Model metrics"), sections
    assert [name for name in sections if name.startswith("layer")] == ["layer1", "layer2"], sections
    card = page.locator('[data-testid="experiment-view-compare-runs-card"]').first
    assert card.locator("h4").first.inner_text() == "train_mse"
    plot = card.locator(".js-plotly-plot")
    # Plotly draws one marker per logged step once the data has arrived.
    plot.locator("g.scatterlayer path.point").nth(len(history) - 1).wait_for()

    # What the chart plots: Plotly keeps its traces on the chart's element.
    traces = plot.evaluate(
        "element => element.data.map(trace => ({name: trace.name, x: Array.from(trace.x), y: Array.from(trace.y)}))"
    )
    drawn = [trace for trace in traces if trace["name"] == sweep.child.info.run_name]
    assert drawn, traces
    for trace in drawn:
        assert trace["x"] == [metric.step for metric in history]
        assert trace["y"] == pytest.approx([metric.value for metric in history], rel=1e-12)
    screenshot(page, "dashboard-metric.png")


def test_a_child_run_shows_its_learning_curves_png_as_an_image(sweep: Sweep, server: str, page: Any) -> None:
    from mlflow.tracking import MlflowClient

    assert sweep.child.info.artifact_uri.startswith("mlflow-artifacts:"), sweep.child.info.artifact_uri
    logged = Path(MlflowClient(server).download_artifacts(sweep.child.info.run_id, PLOT, str(sweep.folder / "plot")))

    page.goto(run_page(server, sweep, sweep.child, "/artifacts"))
    folder, name = PLOT.split("/")
    page.get_by_text(folder, exact=True).click()
    page.get_by_text(name, exact=True).click()

    image = page.locator(f'img[alt="{PLOT}"]')
    image.wait_for()
    # Rendered: the browser decoded the bytes the server sent into a picture of the PNG's size.
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    shown = image.evaluate("image => [image.naturalWidth, image.naturalHeight]")
    assert tuple(shown) == png_size(logged)
    assert image.is_visible()
