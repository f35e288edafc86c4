"""``bprun-report``'s work: a ranked comparison table of a sweep's (or an experiment's) runs,
written with its charts (``write_report``); a sweep's parent run keeps the same report as its
``summary/`` artifacts."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from runner.plots.style import save_png
from runner.reports.charts import final_vs_key_figure, learning_curves_figure
from runner.reports.table import (
    DEFAULT_METRIC,
    Histories,
    clean_key,
    is_numeric,
    markdown_table,
    rank_runs,
    sort_description,
    swept_columns,
)

RUNS_CSV = "runs.csv"
RUNS_MARKDOWN = "runs.md"
LEARNING_CURVES = "learning_curves.png"


def write_report(
    table: pd.DataFrame,
    histories: Histories,
    output_dir: str | os.PathLike,
    metric: str = DEFAULT_METRIC,
    color_by: str | None = None,
    top_k: int | None = None,
) -> list[Path]:
    """Rank ``table`` by ``metric`` (see ``rank_runs``), keep ``top_k`` rows, and write into
    ``output_dir`` (created if needed): ``runs.csv``, ``runs.md``, ``learning_curves.png`` and
    one ``final_<metric>_vs_<key>.png`` per numeric swept key with at least two values.

    ``color_by`` is the swept key that colours the learning curves (default: the first swept key
    with more than one value). Returns the paths written.
    """
    ranked = rank_runs(table, metric, top_k)
    keys = swept_columns(ranked)
    color_key = clean_key(color_by) if color_by else next((key for key in keys if ranked[key].nunique() > 1), None)
    if color_key is not None and color_key not in keys:
        raise ValueError(f"color_by={color_by!r} is not a swept key; choose one of {', '.join(keys) or '(none)'}")

    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    csv_path = directory / RUNS_CSV
    ranked.to_csv(csv_path, index=False)
    written.append(csv_path)

    markdown_path = directory / RUNS_MARKDOWN
    markdown_path.write_text(
        f"Runs ranked by {sort_description(ranked, metric)}.\n\n{markdown_table(ranked, metric)}\n"
    )
    written.append(markdown_path)

    figures = [(LEARNING_CURVES, learning_curves_figure(ranked, histories, metric, color_key))]
    for key in keys:
        if is_numeric(ranked, key) and ranked[key].nunique() > 1:
            figures.append(
                (f"final_{file_part(metric)}_vs_{file_part(key)}.png", final_vs_key_figure(ranked, metric, key))
            )
    for file_name, figure in figures:
        path = directory / file_name
        save_png(figure, path)
        written.append(path)
    return written


def file_part(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name)
