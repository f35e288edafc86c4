"""``bprun-report`` on a small real MLflow store, built by hand with ``MlflowClient`` (no sweep
machinery): a sweep parent with four job runs (one FAILED, one without a validation split), an
older sweep, and a run outside any sweep. Every value asserted is read back from the store or
from the files written."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runner import reports
from runner.commands import report as report_command
from runner.names import logged_metric_name
from runner.reports import charts
from runner.reports import table as report_table
from runner.tracking import search
from runner.tracking.history import MetricHistory

EXPERIMENT = "backprop-runner"
EPOCHS = 6
START_MS = 1_790_000_000_000  # job start times; each job lasts DURATION_MS
DURATION_MS = 2_500
SWEPT_KEYS = ["optimizer.lr", "model.hidden", "dataset"]


@dataclass(frozen=True)
class Job:
    name: str
    lr: float
    hidden: list[int]
    dataset: str
    status: str
    train_mse: list[float]
    val_mse: list[float] | None  # None: no validation split (xor)


def _decay(start: float, end: float, epochs: int = EPOCHS) -> list[float]:
    return list(np.geomspace(start, end, epochs))


JOBS = [
    Job("lr0.1-h4-moons", 0.1, [4], "moons", "FINISHED", _decay(0.3, 0.05), _decay(0.3, 0.04)),
    # Overfits: val_mse dips to 0.15 at epoch 3 and ends at 0.22, so best < final.
    Job("lr0.01-h4-moons", 0.01, [4], "moons", "FINISHED", _decay(0.3, 0.2), [0.3, 0.25, 0.2, 0.15, 0.18, 0.22]),
    Job("lr1-h8x8-xor", 1.0, [8, 8], "xor", "FINISHED", _decay(0.3, 0.01), None),
    # Crashed after 4 epochs with the lowest val_mse of all, yet ranks last; no epochs_run tag,
    # so the report counts the epochs of its history.
    Job("lr10-h8x8-moons", 10.0, [8, 8], "moons", "FAILED", [0.3, 0.2, 0.1, 0.05], [0.3, 0.15, 0.08, 0.03]),
]
# Ranked by final val_mse, train_mse where there is none (xor), the failed run last.
EXPECTED_ORDER = ["lr1-h8x8-xor", "lr0.1-h4-moons", "lr0.01-h4-moons", "lr10-h8x8-moons"]
FAILURE_REASON = "RuntimeError: the worker process was lost"


@dataclass(frozen=True)
class SweepStore:
    uri: str
    db: Path
    experiment_id: str
    parent_id: str
    child_ids: dict[str, str]  # run name -> run id
    old_parent_id: str
    old_child_name: str
    standalone_name: str


def _log_job(client, experiment_id: str, job: Job, start_ms: int, parent_id: str | None, run_number: int) -> str:
    from mlflow.entities import Metric, Param

    tags = {"mlflow.parentRunId": parent_id} if parent_id else {}
    run = client.create_run(experiment_id, start_time=start_ms, run_name=job.name, tags=tags)
    run_id = run.info.run_id
    params = {
        "optimizer.lr": format(job.lr, ".15g"),
        "optimizer.name": "gd",
        "model.hidden": json.dumps(job.hidden),
        "dataset.name": job.dataset,
        "dataset.val_fraction": "0" if job.val_mse is None else "0.2",
        "choice.dataset": job.dataset,
        "choice.model": "mlp",
        "choice.optimizer": "gd",
        "seed": "0",
        # Differs between runs but says nothing about them: never a column.
        "tracking.run_name": f"run-{run_number}",
    }
    # Every other run logs the names of a store written before the loss sections (train_mse, not
    # 1_loss/train_mse): a report reads both, side by side.
    name = (lambda short: short) if run_number % 2 else logged_metric_name
    metrics = [Metric(name("train_mse"), value, start_ms + epoch, epoch) for epoch, value in enumerate(job.train_mse)]
    metrics += [
        Metric(name("val_mse"), value, start_ms + epoch, epoch) for epoch, value in enumerate(job.val_mse or [])
    ]
    # Per-layer metrics are logged too, and must not confuse the report.
    metrics += [Metric("layer1/weight_norm", 1.0 + epoch, start_ms + epoch, epoch) for epoch in range(EPOCHS)]
    client.log_batch(run_id, metrics=metrics, params=[Param(key, value) for key, value in params.items()])
    if job.status == "FINISHED":
        client.set_tag(run_id, "epochs_run", str(len(job.train_mse)))
        client.set_tag(run_id, "stop_reason", "completed")
    else:
        client.set_tag(run_id, "failure_reason", FAILURE_REASON)
    client.set_terminated(run_id, job.status, end_time=start_ms + DURATION_MS)
    return run_id


def _create_parent(client, experiment_id: str, start_ms: int, jobs: list[Job]) -> str:
    from mlflow.entities import Param

    parent = client.create_run(
        experiment_id,
        start_time=start_ms,
        run_name="sweep",
        tags={
            "bprun.sweep": "true",
            "sweep.command": "bprun -m optimizer.lr=... model.hidden=... dataset=...",
            "sweep.swept_keys": json.dumps(SWEPT_KEYS),
        },
    )
    values = {
        "optimizer.lr": sorted({job.lr for job in jobs}),
        "model.hidden": [[4], [8, 8]],
        "dataset": sorted({job.dataset for job in jobs}),
    }
    client.log_batch(
        parent.info.run_id, params=[Param(f"sweep.{key}", json.dumps(value)) for key, value in values.items()]
    )
    return parent.info.run_id


@pytest.fixture(scope="module")
def sweep_store(make_store) -> SweepStore:
    store = make_store("report")
    client = store.client()
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(store.directory / "artifacts").as_uri())

    # An older sweep of one job, and a run outside any sweep.
    old_start = START_MS - 3_600_000
    old_parent_id = _create_parent(client, experiment_id, old_start, JOBS[:1])
    old_job = Job("old-sweep-job", 0.5, [4], "moons", "FINISHED", _decay(0.3, 0.1), _decay(0.3, 0.1))
    _log_job(client, experiment_id, old_job, old_start + 1000, old_parent_id, 0)
    client.set_terminated(old_parent_id, "FINISHED", end_time=old_start + 10_000)
    standalone = Job("standalone-run", 0.1, [4], "moons", "FINISHED", _decay(0.3, 0.1), _decay(0.3, 0.1))
    _log_job(client, experiment_id, standalone, old_start + 20_000, None, 0)

    parent_id = _create_parent(client, experiment_id, START_MS, JOBS)
    child_ids = {
        job.name: _log_job(client, experiment_id, job, START_MS + 10_000 * (number + 1), parent_id, number + 1)
        for number, job in enumerate(JOBS)
    }
    client.set_terminated(parent_id, "FAILED", end_time=START_MS + 60_000)
    return SweepStore(
        store.uri, store.db, experiment_id, parent_id, child_ids, old_parent_id, old_job.name, standalone.name
    )


@pytest.fixture(scope="module")
def sweep_table(sweep_store: SweepStore):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep_store.uri)
    children = search.sweep_children(client, sweep_store.parent_id)
    return report_table.runs_table(client, children, SWEPT_KEYS)


# --- finding runs ----------------------------------------------------------------------------


def test_finds_the_latest_sweep_and_its_children(sweep_store: SweepStore) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep_store.uri)
    latest = search.find_latest_sweep(client, [sweep_store.experiment_id])
    assert latest is not None and latest.info.run_id == sweep_store.parent_id

    children = search.sweep_children(client, sweep_store.parent_id)
    assert {run.info.run_id for run in children} == set(sweep_store.child_ids.values())
    assert [run.info.run_name for run in children] == [job.name for job in JOBS]  # oldest first
    assert [run.info.run_name for run in search.sweep_children(client, sweep_store.old_parent_id)] == [
        sweep_store.old_child_name
    ]

    every_run = {run.info.run_name for run in search.experiment_runs(client, sweep_store.experiment_id)}
    assert every_run == {*sweep_store.child_ids, sweep_store.old_child_name, sweep_store.standalone_name}


# --- the table -------------------------------------------------------------------------------


def test_runs_table_has_one_row_per_job_with_values_read_back(sweep_store: SweepStore, sweep_table) -> None:
    table, histories = sweep_table
    assert list(table["run_name"]) == [job.name for job in JOBS]
    assert list(table["run_id"]) == [sweep_store.child_ids[job.name] for job in JOBS]
    assert list(table["status"]) == [job.status for job in JOBS]
    assert report_table.swept_columns(table) == SWEPT_KEYS

    # Swept values parsed: numbers as floats, lists and group options as text.
    assert table["optimizer.lr"].dtype == np.float64
    assert list(table["optimizer.lr"]) == [job.lr for job in JOBS]
    assert list(table["model.hidden"]) == [json.dumps(job.hidden) for job in JOBS]
    assert list(table["dataset"]) == [job.dataset for job in JOBS]  # from choice.dataset

    for row, job in zip(table.itertuples(index=False), JOBS):
        assert row.final_train_mse == pytest.approx(job.train_mse[-1])
        assert row.best_train_mse == pytest.approx(min(job.train_mse))
        if job.val_mse is None:
            assert math.isnan(row.final_val_mse) and math.isnan(row.best_val_mse)
        else:
            assert row.final_val_mse == pytest.approx(job.val_mse[-1])
            assert row.best_val_mse == pytest.approx(min(job.val_mse))
            assert row.best_val_mse <= row.final_val_mse
        assert row.duration_s == pytest.approx(DURATION_MS / 1000)
    dip = table.set_index("run_name").loc["lr0.01-h4-moons"]
    assert dip["best_val_mse"] == pytest.approx(0.15) and dip["final_val_mse"] == pytest.approx(0.22)

    # The failed run: its reason, and its epochs counted from its history (no epochs_run tag).
    assert list(table["epochs_run"]) == [EPOCHS, EPOCHS, EPOCHS, 4]
    assert list(table["failure_reason"].fillna("")) == ["", "", "", FAILURE_REASON]

    # Histories are kept for the plots: one per run and logged metric, layer metrics not fetched.
    failed_id = sweep_store.child_ids["lr10-h8x8-moons"]
    assert set(histories[failed_id]) == {"train_mse", "val_mse"}
    assert list(histories[failed_id]["val_mse"].values) == pytest.approx([0.3, 0.15, 0.08, 0.03])
    assert set(histories[sweep_store.child_ids["lr1-h8x8-xor"]]) == {"train_mse"}


def test_a_job_that_failed_before_its_run_existed_is_a_row_read_from_its_overrides(sweep_store: SweepStore) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep_store.uri)
    overrides = ["optimizer.lr=0.5", "model.hidden=[8,8]", "dataset=moons"]
    table, _ = report_table.runs_table(
        client,
        search.sweep_children(client, sweep_store.old_parent_id),
        SWEPT_KEYS,
        unrecorded=[(overrides, "invalid input")],
    )
    assert len(table) == 2
    row = report_table.rank_runs(table).iloc[-1]
    assert row["run_name"] == " ".join(overrides) and row["status"] == "FAILED" and row["run_id"] == ""
    # The same values a logged param would give: 0.5 a number, [8,8] written as [8, 8].
    assert (row["optimizer.lr"], row["model.hidden"], row["dataset"]) == (0.5, "[8, 8]", "moons")
    assert math.isnan(row["final_train_mse"]) and pd.isna(row["epochs_run"])
    assert row["failure_reason"] == "invalid input"


def test_without_swept_keys_the_columns_are_the_params_that_differ(sweep_store: SweepStore) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep_store.uri)
    table, _ = report_table.runs_table(client, search.sweep_children(client, sweep_store.parent_id))
    # tracking.run_name differs but is ignored; dataset.name and dataset.val_fraction come with
    # the dataset option, so the option stands for them.
    assert report_table.swept_columns(table) == ["dataset", "model.hidden", "optimizer.lr"]
    assert list(table["optimizer.lr"]) == [job.lr for job in JOBS]


def test_ranking_puts_missing_validation_on_train_and_failed_runs_last(sweep_table) -> None:
    table, _ = sweep_table
    assert list(report_table.rank_runs(table, "val_mse")["run_name"]) == EXPECTED_ORDER
    assert list(report_table.rank_runs(table, "train_mse", top_k=2)["run_name"]) == ["lr1-h8x8-xor", "lr0.1-h4-moons"]


def test_format_table_lists_the_ranked_runs(sweep_table) -> None:
    table, _ = sweep_table
    text = report_table.format_table(table, "val_mse", None)
    lines = text.splitlines()
    positions = [next(i for i, line in enumerate(lines) if name in line) for name in EXPECTED_ORDER]
    assert positions == sorted(positions)
    assert FAILURE_REASON[:30] in text
    assert "0.15" in text  # the dip run's best val_mse, 5 significant digits at most
    top = report_table.format_table(table, "val_mse", 2)
    assert "top 2 of 4" in top and EXPECTED_ORDER[1] in top and EXPECTED_ORDER[2] not in top


# --- files -----------------------------------------------------------------------------------


def _assert_real_png(path: Path, min_width: int = 500, min_height: int = 350) -> None:
    from matplotlib import image

    pixels = image.imread(path)
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height, (path.name, pixels.shape)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 50, f"{path.name}: only {len(colours)} distinct colours"


def test_write_report_writes_ranked_csv_markdown_and_plots(sweep_table, tmp_path: Path) -> None:
    table, histories = sweep_table
    written = reports.write_report(table, histories, tmp_path / "out", metric="val_mse", color_by="optimizer.lr")
    names = [path.name for path in written]
    assert names == ["runs.csv", "runs.md", "learning_curves.png", "final_val_mse_vs_optimizer.lr.png"]
    assert all(path.is_file() for path in written)

    csv = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(csv["run_name"]) == EXPECTED_ORDER
    assert list(csv["optimizer.lr"]) == [1.0, 0.1, 0.01, 10.0]
    assert csv["final_val_mse"].iloc[1:3].tolist() == pytest.approx([0.04, 0.22])

    markdown = (tmp_path / "out" / "runs.md").read_text().splitlines()
    table_lines = [line for line in markdown if line.startswith("|")]
    assert len(table_lines) == 2 + 4  # header, alignment row, one row per run
    assert [next(name for name in EXPECTED_ORDER if name in line) for line in table_lines[2:]] == EXPECTED_ORDER
    assert "---:" in table_lines[1]  # numbers right-aligned

    for path in written[2:]:
        _assert_real_png(path)


def test_write_report_keeps_top_k_and_colours_by_a_category(sweep_table, tmp_path: Path) -> None:
    table, histories = sweep_table
    written = reports.write_report(table, histories, tmp_path, color_by="dataset", top_k=2)
    assert list(pd.read_csv(tmp_path / "runs.csv")["run_name"]) == EXPECTED_ORDER[:2]
    _assert_real_png(tmp_path / "learning_curves.png")
    assert tmp_path / "final_val_mse_vs_optimizer.lr.png" in written

    with pytest.raises(ValueError, match="not a swept key"):
        reports.write_report(table, histories, tmp_path, color_by="optimizer.momentum")


def test_a_diverged_run_does_not_flatten_the_learning_curves(
    sweep_store: SweepStore, sweep_table, tmp_path: Path
) -> None:
    """A diverging run logs values up to about 1e306 before it stops; drawn as they are on a log
    axis they overflow matplotlib's transform (a RuntimeWarning, an error here)."""
    table, histories = sweep_table
    failed_id = sweep_store.child_ids["lr10-h8x8-moons"]
    diverged = {
        **histories,
        failed_id: {
            name: MetricHistory(np.arange(4.0), np.array([0.3, 5.0, 1e150, 1e306])) for name in ("train_mse", "val_mse")
        },
    }
    reports.write_report(table, diverged, tmp_path)
    _assert_real_png(tmp_path / "learning_curves.png")


def test_learning_curves_name_the_metric_they_draw(sweep_store: SweepStore, sweep_table) -> None:
    """val_mse is the default; a run without a validation split is drawn with its train_mse,
    dashed among runs that have val_mse, and a chart where no run has one is named train_mse."""
    table, histories = sweep_table
    mixed = charts.learning_curves_figure(table, histories, "val_mse", None)
    axes = mixed.axes[0]
    assert axes.get_ylabel() == "val_mse"
    assert sorted(line.get_linestyle() for line in axes.get_lines() if len(line.get_xdata()) > 1) == [
        "-",
        "-",
        "-",
        "--",
    ]
    assert "train_mse (no validation split)" in [text.get_text() for text in axes.get_legend().get_texts()]

    xor_only = table[table["run_id"] == sweep_store.child_ids["lr1-h8x8-xor"]]
    train_only = charts.learning_curves_figure(xor_only, histories, "val_mse", None)
    axes = train_only.axes[0]
    assert axes.get_ylabel() == "train_mse"
    assert axes.get_title() == "Learning curves: train_mse, 1 run (no validation split)"
    assert {line.get_linestyle() for line in axes.get_lines() if len(line.get_xdata()) > 1} == {"-"}


def _tick_labels(figure, axis) -> list[tuple[str, object]]:
    """The visible tick labels of ``axis`` as drawn: (text, window extent)."""
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    return [
        (label.get_text(), label.get_window_extent(renderer))
        for label in axis.get_ticklabels()
        if label.get_visible() and label.get_text()
    ]


@pytest.mark.parametrize(
    ("values", "labelled"),
    [
        # A grid: every swept value is labelled.
        ([1.0, 0.1, 0.01, 10.0], ["0.01", "0.1", "1", "10"]),
        # An Optuna search put two trials 2% apart and a third close by: the labels must not overlap.
        ([0.224, 0.229, 0.0164, 0.255], ["0.0164", "0.255"]),
    ],
)
def test_swept_values_label_their_axis_without_overlapping(sweep_table, values, labelled) -> None:
    table, histories = sweep_table
    table = table.assign(**{"optimizer.lr": values})
    final_vs_lr = charts.final_vs_key_figure(table, "val_mse", "optimizer.lr")
    curves = charts.learning_curves_figure(table, histories, "val_mse", "optimizer.lr")
    colour_bar = curves.axes[1]
    for figure, axis in ((final_vs_lr, final_vs_lr.axes[0].xaxis), (curves, colour_bar.yaxis)):
        drawn = _tick_labels(figure, axis)
        texts = [text for text, _ in drawn]
        assert [labelled[0], labelled[-1]] == [texts[0], texts[-1]], texts
        if len(labelled) == 4:
            assert texts == labelled
        boxes = [box for _, box in drawn]
        overlapping = [
            (texts[i], texts[j])
            for i in range(len(boxes))
            for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])
        ]
        assert not overlapping, texts


# --- command line ----------------------------------------------------------------------------


def test_main_reports_a_sweep_by_parent_id(sweep_store: SweepStore, tmp_path: Path, capsys) -> None:
    output = tmp_path / "by-parent"
    code = report_command.main(
        ["--parent", sweep_store.parent_id, "--tracking-uri", sweep_store.uri, "--output", str(output), "--top-k", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert sweep_store.parent_id in out
    # Ranked within each data set: the top 2 of moons (the failed run dropped), xor's one run.
    assert all(name in out for name in EXPECTED_ORDER[:3]) and EXPECTED_ORDER[3] not in out
    assert list(pd.read_csv(output / "moons" / "runs.csv")["run_name"]) == EXPECTED_ORDER[1:3]
    assert list(pd.read_csv(output / "xor" / "runs.csv")["run_name"]) == ["lr1-h8x8-xor"]
    assert str(output / "moons" / "learning_curves.png") in out


def test_main_defaults_to_the_latest_sweep(
    sweep_store: SweepStore, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep_store.uri)
    assert report_command.main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPECTED_ORDER)
    assert sweep_store.old_child_name not in out and sweep_store.standalone_name not in out
    default_output = tmp_path / "reports" / sweep_store.parent_id
    assert len(pd.read_csv(default_output / "moons" / "runs.csv")) + len(
        pd.read_csv(default_output / "xor" / "runs.csv")
    ) == len(JOBS)


def test_main_reports_a_whole_experiment(sweep_store: SweepStore, tmp_path: Path, capsys) -> None:
    code = report_command.main(
        [
            "--experiment",
            EXPERIMENT,
            "--all-runs",
            "--tracking-uri",
            sweep_store.uri,
            "--output",
            str(tmp_path),
            "--metric",
            "train_mse",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert sweep_store.standalone_name in out and sweep_store.old_child_name in out
    moons, xor = pd.read_csv(tmp_path / "moons" / "runs.csv"), pd.read_csv(tmp_path / "xor" / "runs.csv")
    assert len(moons) == 3 + 2  # and the old sweep's job and the run outside any sweep
    assert list(xor["run_name"]) == ["lr1-h8x8-xor"]
    assert moons["run_name"].iloc[0] == "lr0.1-h4-moons"  # lowest final train_mse of the moons runs


def test_runs_of_different_data_sets_are_ranked_apart_and_runs_without_the_metric_not_at_all(
    sweep_store: SweepStore, tmp_path: Path, capsys
) -> None:
    code = report_command.main(
        [
            "--parent",
            sweep_store.parent_id,
            "--tracking-uri",
            sweep_store.uri,
            "--output",
            str(tmp_path),
            "--metric",
            "val_mse",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    sections = out.split("data set ")[1:]
    assert [section.split(":", 1)[0] for section in sections] == ["moons", "xor"]
    moons_rows = [line.split() for line in sections[0].splitlines() if "-moons" in line]
    assert [(row[0], row[1]) for row in moons_rows] == [
        ("1", "lr0.1-h4-moons"),
        ("2", "lr0.01-h4-moons"),
        ("-", "lr10-h8x8-moons"),
    ]  # FAILED: listed, not ranked
    xor_rows = [line.split() for line in sections[1].splitlines() if "-xor" in line]
    assert [(row[0], row[1]) for row in xor_rows] == [("1", "lr1-h8x8-xor")]


def test_main_refuses_a_missing_store_without_creating_it(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert report_command.main([]) == 2
    error = capsys.readouterr().err
    assert "no MLflow store" in error and str(tmp_path / "mlflow.db") in error
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "reports").exists()


def test_main_leaves_a_file_that_is_not_a_store_untouched(tmp_path: Path, capsys) -> None:
    import sqlite3
    from contextlib import closing

    # An SQLite file without MLflow's tables: MLflow would add them on connecting.
    database = tmp_path / "other.db"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.commit()
    before = database.read_bytes()
    text_file = tmp_path / "notes.db"
    text_file.write_text("not a database")
    for path in (database, text_file):
        assert report_command.main(["--tracking-uri", f"sqlite:///{path}", "--output", str(tmp_path / "out")]) == 2
        assert "is not an MLflow store" in capsys.readouterr().err
    assert database.read_bytes() == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--parent", "0123456789abcdef0123456789abcdef"], "no run"),
        (["--experiment", "no-such-experiment"], "no experiment 'no-such-experiment'"),
        (["--color-by", "optimizer.momentum"], "not a swept key"),
        (["--metric", "val_accuracy"], "no run has a value of 'val_accuracy'"),
    ],
)
def test_main_explains_what_is_missing(
    sweep_store: SweepStore, tmp_path: Path, capsys, arguments: list[str], message: str
) -> None:
    code = report_command.main([*arguments, "--tracking-uri", sweep_store.uri, "--output", str(tmp_path / "out")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
