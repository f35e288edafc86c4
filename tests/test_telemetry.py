"""Per-epoch telemetry read back from a real MLflow store: layer statistics, tensors, plots,
provenance, the model, and what a failed or interrupted run keeps."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from engine import Observer
from runner.core.run import TrainingFailed, run
from runner.names import LAYER_STATISTICS
from runner.tracking.tensors import load_tensors

EPOCHS = 12


class Recorder(Observer):
    """Copies of what the engine itself reports every epoch, to compare the logged tensors with."""

    wants_gradients = True

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.weights, self.biases, self.grad_weights, self.grad_biases = [], [], [], []
        self.interrupt_at = interrupt_at

    def on_epoch_end(self, report) -> None:
        if report.epoch == self.interrupt_at:
            raise KeyboardInterrupt
        self.weights.append([w.copy() for w in report.weights])
        self.biases.append([b.copy() for b in report.biases])
        self.grad_weights.append([g.copy() for g in report.grad_weights])
        self.grad_biases.append([g.copy() for g in report.grad_biases])


def tracked(compose, store, *overrides, observer=None):
    cfg = compose(
        ["dataset=iris", "model.hidden=[6,5]", f"trainer.epochs={EPOCHS}", "trainer.batch_size=32", *overrides]
    )
    return run(cfg, tracking_uri=store.uri, observers=[observer] if observer else [])


@pytest.fixture(scope="module")
def iris_run(make_store, compose):
    store = make_store("telemetry")
    recorder = Recorder()
    result = tracked(compose, store, observer=recorder)
    return store, result, recorder


def test_layer_statistics_are_logged_every_epoch(iris_run):
    store, result, _ = iris_run
    client = store.client()
    for layer in (1, 2, 3):
        for statistic in LAYER_STATISTICS:
            history = client.get_metric_history(result.run_id, f"layer{layer}/{statistic}")
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(EPOCHS))
            assert all(math.isfinite(m.value) and m.value >= 0 for m in history)
    final_norm = max(client.get_metric_history(result.run_id, "layer3/weight_norm"), key=lambda m: m.step).value
    assert final_norm == pytest.approx(np.linalg.norm(result.network.weights[2]), rel=1e-12)
    for name in ("1_loss/train_mse", "1_loss/val_mse", "2_accuracy/train_accuracy", "2_accuracy/val_accuracy"):
        assert len(client.get_metric_history(result.run_id, name)) == EPOCHS


def test_tensors_equal_the_engines_own_weights_and_gradients(iris_run):
    store, result, recorder = iris_run
    tensors = load_tensors(result.run_id, store.uri)
    assert tensors["epochs"].tolist() == list(range(EPOCHS))
    sizes = result.network.sizes
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
        assert tensors[f"layer{layer}.weights"].shape == (EPOCHS, fan_in, fan_out)
        assert tensors[f"layer{layer}.grad_weights"].shape == (EPOCHS, fan_in, fan_out)
        assert tensors[f"layer{layer}.biases"].shape == (EPOCHS, fan_out)
        assert tensors[f"layer{layer}.grad_biases"].shape == (EPOCHS, fan_out)
        for epoch in range(EPOCHS):
            assert np.array_equal(tensors[f"layer{layer}.weights"][epoch], recorder.weights[epoch][layer - 1])
            assert np.array_equal(tensors[f"layer{layer}.biases"][epoch], recorder.biases[epoch][layer - 1])
            assert np.array_equal(tensors[f"layer{layer}.grad_weights"][epoch], recorder.grad_weights[epoch][layer - 1])
            assert np.array_equal(tensors[f"layer{layer}.grad_biases"][epoch], recorder.grad_biases[epoch][layer - 1])
    assert np.array_equal(tensors["layer1.weights"][-1], result.network.weights[0])


def test_plots_are_non_trivial_images(iris_run):
    import matplotlib.image

    store, result, _ = iris_run
    directory = store.directory / "downloaded"
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="plots", tracking_uri=store.uri, dst_path=str(directory)
    )
    for name in ("learning_curves.png", "gradient_norms.png", "weight_norms.png"):
        image = matplotlib.image.imread(f"{local}/{name}")
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50


def test_provenance_tags_and_dataset_input(iris_run):
    store, result, _ = iris_run
    run = store.client().get_run(result.run_id)
    tags = run.data.tags
    assert len(tags["git.commit"]) == 40 or tags["git.commit"] == "unknown"
    assert tags["git.dirty"] in ("true", "false", "unknown")
    assert tags["version.numpy"] == np.__version__
    for key in ("version.python", "version.hydra_core", "version.mlflow", "blas.library", "config.sha256"):
        assert tags[key]
    assert tags["blas.threads"] == "1"  # trainer.blas_threads
    assert tags["data.sha256"] == result.dataset.fingerprint()
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["iris"]


def test_pyfunc_model_reproduces_the_engine(iris_run):
    import mlflow.pyfunc
    import pandas as pd

    store, result, _ = iris_run
    mlflow.set_tracking_uri(store.uri)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    dataset = result.dataset
    raw = dataset.X_val * dataset.feature_scale + dataset.feature_mean
    predicted = model.predict(pd.DataFrame(raw, columns=dataset.feature_names))
    assert list(predicted.columns) == dataset.class_names
    np.testing.assert_allclose(predicted.to_numpy(), result.network.predict(dataset.X_val), rtol=0, atol=1e-12)


@pytest.mark.parametrize("every, expected", [(5, [0, 5, 10, 11]), (0, None)])
def test_tensors_every(compose, store, every, expected):
    result = tracked(compose, store, f"tracking.tensors_every={every}")
    client = store.client()
    artifacts = [a.path for a in client.list_artifacts(result.run_id)]
    if expected is None:
        assert "tensors" not in artifacts
    else:
        tensors = load_tensors(result.run_id, store.uri)
        assert tensors["epochs"].tolist() == expected
        assert tensors["layer2.weights"].shape == (len(expected), 6, 5)


def test_an_interrupted_run_keeps_what_it_logged(compose, store):
    with pytest.raises(KeyboardInterrupt):
        tracked(compose, store, observer=Recorder(interrupt_at=5))
    client = store.client()
    (run,) = client.search_runs([client.get_experiment_by_name("backprop-runner").experiment_id])
    assert run.info.status == "KILLED"
    # The interrupt comes from an observer after the telemetry observers saw epoch 5 complete.
    assert len(client.get_metric_history(run.info.run_id, "1_loss/train_mse")) == 6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "tensors", "config.yaml"} <= artifacts
    assert "model" not in artifacts  # an interrupted training is not a model to serve
    tensors = load_tensors(run.info.run_id, store.uri)
    assert tensors["epochs"].tolist() == [0, 1, 2, 3, 4, 5]
    assert tensors["layer1.weights"].shape[0] == 6


def test_a_diverged_run_is_failed_with_its_reason_and_no_non_finite_metric(compose, store):
    cfg = compose(["model.output_activation=identity", "optimizer.lr=1e6", "trainer.epochs=60"])
    with pytest.raises(TrainingFailed, match="diverged at epoch"):
        run(cfg, tracking_uri=store.uri)
    client = store.client()
    (failed,) = client.search_runs([client.get_experiment_by_name("backprop-runner").experiment_id])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure_reason"].startswith("diverged at epoch")
    for key in failed.data.metrics:
        # MLflow would store an inf as 1.797e308: nothing that large (or NaN) may have been sent.
        assert all(
            math.isfinite(m.value) and abs(m.value) < 1.7e308
            for m in client.get_metric_history(failed.info.run_id, key)
        ), key


@pytest.mark.parametrize(
    ("epochs", "every", "kept"),
    [
        (251, None, [*range(0, 250, 3), 250]),  # at most 100 evenly spaced epochs, and the last
        (50, None, list(range(50))),  # short runs keep every epoch
        (10, 4, [0, 4, 8, 9]),  # every 4th and the last
        (9, 4, [0, 4, 8]),  # the last is on the schedule
    ],
)
def test_the_tensors_keep_a_bounded_number_of_epochs_and_the_last(epochs, every, kept, compose, tmp_path, store_at):
    store = store_at(tmp_path / "store")
    recorder = Recorder()
    overrides = [f"trainer.epochs={epochs}"] + ([f"tracking.tensors_every={every}"] if every else [])
    result = tracked(compose, store, *overrides, observer=recorder)
    tensors = load_tensors(result.run_id, store.uri)
    assert tensors["epochs"].tolist() == kept
    assert len(kept) <= 101
    for record, epoch in enumerate(kept):
        assert np.array_equal(tensors["layer1.weights"][record], recorder.weights[epoch][0])
        assert np.array_equal(tensors["layer3.grad_biases"][record], recorder.grad_biases[epoch][2])
    assert np.array_equal(tensors["layer2.weights"][-1], result.network.weights[1])  # the final weights
    assert result.artifact_bytes > sum(array.nbytes for array in tensors.values())
