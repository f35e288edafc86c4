"""Values worked out by hand: one gradient-descent step, the optimizers, the schedules.

The expected numbers are literals computed on paper (the arithmetic is in the comments), not
recomputed with NumPy, so a mistake shared by the engine and a NumPy re-implementation cannot
hide here.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine

TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------
# One full-batch gradient-descent step on a 2-2-1 sigmoid network with mse
# ---------------------------------------------------------------------------------------------
#
# Two samples (rows), two inputs, two sigmoid hidden units, one sigmoid output; lr = 0.5.
#
#   X = [[ 1.0, 2.0],      Y = [[1.0],
#        [-1.0, 0.5]]           [0.0]]
#
#   W1 = [[0.1, -0.2],     b1 = [0.05, -0.1]      (W1[i, j]: input i -> hidden unit j)
#         [0.3,  0.4]]
#   W2 = [[ 0.5],          b2 = [0.2]
#         [-0.6]]
#
# Forward, z1 = X W1 + b1:
#   z1[0] = [1*0.1 + 2*0.3 + 0.05,  1*(-0.2) + 2*0.4 - 0.1]        = [0.75, 0.5]
#   z1[1] = [-1*0.1 + 0.5*0.3 + 0.05, -1*(-0.2) + 0.5*0.4 - 0.1]    = [0.1,  0.3]
# a1 = 1 / (1 + e^-z1), with e^-0.75 = 0.472367, e^-0.5 = 0.606531, e^-0.1 = 0.904837,
# e^-0.3 = 0.740818:
#   a1[0] = [1/1.472367, 1/1.606531] = [0.679179, 0.622459]
#   a1[1] = [1/1.904837, 1/1.740818] = [0.524979, 0.574443]
# z2 = a1 W2 + b2:
#   z2[0] = 0.679179*0.5 + 0.622459*(-0.6) + 0.2 = 0.339589 - 0.373476 + 0.2 = 0.166114
#   z2[1] = 0.524979*0.5 + 0.574443*(-0.6) + 0.2 = 0.262490 - 0.344666 + 0.2 = 0.117824
# a2 = sigmoid(z2), with e^-0.166114 = 0.846950, e^-0.117824 = 0.888852:
#   a2 = [1/1.846950, 1/1.888852] = [0.541433, 0.529422]
#
# Loss, averaged over n = 2 samples and k = 1 output:
#   E = ((0.541433 - 1)^2 + (0.529422 - 0)^2) / 2 = (0.210284 + 0.280288) / 2 = 0.245286
#
# Backward. dE/da2 = 2 (a2 - y) / (n k) = (a2 - y):
#   dE/da2 = [-0.458567, 0.529422]
# sigmoid' from the cached output, a2 (1 - a2) = [0.541433*0.458567, 0.529422*0.470578]
#                                              = [0.248283, 0.249134]
#   delta2 = dE/dz2 = [-0.458567*0.248283, 0.529422*0.249134] = [-0.113854, 0.131897]
# grad_W2 = a1^T delta2:
#   [0.679179*(-0.113854) + 0.524979*0.131897,   = [-0.077327 + 0.069243,  = [-0.008084,
#    0.622459*(-0.113854) + 0.574443*0.131897]     -0.070870 + 0.075768]      0.004898]
# grad_b2 = sum of delta2 over rows = -0.113854 + 0.131897 = 0.018043
# delta2 W2^T:
#   row 0: [-0.113854*0.5, -0.113854*(-0.6)] = [-0.056927,  0.068313]
#   row 1: [ 0.131897*0.5,  0.131897*(-0.6)] = [ 0.065949, -0.079138]
# a1 (1 - a1):
#   row 0: [0.679179*0.320821, 0.622459*0.377541] = [0.217895, 0.235004]
#   row 1: [0.524979*0.475021, 0.574443*0.425557] = [0.249376, 0.244458]
# delta1 = (delta2 W2^T) * a1 (1 - a1):
#   row 0: [-0.056927*0.217895, 0.068313*0.235004] = [-0.012404,  0.016054]
#   row 1: [ 0.065949*0.249376, -0.079138*0.244458] = [ 0.016446, -0.019346]
# grad_W1 = X^T delta1:
#   [1*(-0.012404) + (-1)*0.016446,  1*0.016054 + (-1)*(-0.019346)]   = [[-0.028850, 0.035400],
#   [2*(-0.012404) + 0.5*0.016446,   2*0.016054 + 0.5*(-0.019346)]      [-0.016585, 0.022434]]
# grad_b1 = [-0.012404 + 0.016446, 0.016054 - 0.019346] = [0.004042, -0.003292]
#
# Update w <- w - 0.5 grad:
#   W1 = [[0.1 + 0.014425, -0.2 - 0.017700],  = [[0.114425, -0.217700],
#         [0.3 + 0.008293,  0.4 - 0.011217]]     [0.308293,  0.388783]]
#   b1 = [0.05 - 0.002021, -0.1 + 0.001646]    = [0.047979, -0.098354]
#   W2 = [[0.5 + 0.004042], [-0.6 - 0.002449]] = [[0.504042], [-0.602449]]
#   b2 = [0.2 - 0.009021]                      = [0.190979]
#
# The asserted literals below carry a few more digits than the comments (same arithmetic).

X_HAND = [[1.0, 2.0], [-1.0, 0.5]]
Y_HAND = [[1.0], [0.0]]
LR_HAND = 0.5

A1 = [[0.6791786992, 0.6224593312], [0.5249791875, 0.5744425168]]
A2 = [[0.5414332066], [0.5294219912]]
LOSS = 0.2452855744
DELTA2 = [[-0.1138544719], [0.1318972018]]
DELTA1 = [[-0.0124041597, 0.0160537341], [0.0164460009, -0.0193460204]]
GRAD_W1 = [[-0.0288501607, 0.0353997545], [-0.0165853190, 0.0224344581]]
GRAD_B1 = [0.0040418412, -0.0032922862]
GRAD_W2 = [[-0.0080842463], [0.0048975821]]
GRAD_B2 = [0.0180427299]
NEW_W1 = [[0.1144250803, -0.2176998772], [0.3082926595, 0.3887827710]]
NEW_B1 = [0.0479790794, -0.0983538569]
NEW_W2 = [[0.5040421231], [-0.6024487911]]
NEW_B2 = [0.1909786351]


def _hand_network() -> engine.MLP:
    network = engine.MLP([2, 2, 1], np.random.default_rng(0), activation="sigmoid", output_activation="sigmoid")
    network.weights[0][...] = [[0.1, -0.2], [0.3, 0.4]]
    network.biases[0][...] = [0.05, -0.1]
    network.weights[1][...] = [[0.5], [-0.6]]
    network.biases[1][...] = [0.2]
    return network


def test_parameters_are_laid_out_layer_by_layer_weights_then_biases() -> None:
    network = _hand_network()
    assert network.n_params == 9
    assert network.params.tolist() == [0.1, -0.2, 0.3, 0.4, 0.05, -0.1, 0.5, -0.6, 0.2]


def test_backprop_by_hand_on_a_2_2_1_sigmoid_network() -> None:
    network = _hand_network()
    X, Y = np.array(X_HAND), np.array(Y_HAND)
    workspace = network.workspace(2)
    grads = np.zeros(network.n_params)
    grad_weights, grad_biases = network.layer_views(grads)

    loss = network.gradient(X, Y, network.output_delta("mse"), workspace, grad_weights, grad_biases)

    assert loss == pytest.approx(LOSS, abs=TOLERANCE)
    np.testing.assert_allclose(workspace.activations[0], A1, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(workspace.activations[1], A2, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(workspace.deltas[1], DELTA2, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(workspace.deltas[0], DELTA1, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(grad_weights[0], GRAD_W1, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(grad_biases[0], GRAD_B1, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(grad_weights[1], GRAD_W2, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(grad_biases[1], GRAD_B2, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(network.predict(X), A2, rtol=0, atol=TOLERANCE)


class _Capture(engine.Observer):
    wants_gradients = True

    def __init__(self) -> None:
        self.reports: list[dict] = []

    def on_epoch_end(self, report: engine.EpochReport) -> None:
        self.reports.append(
            {
                "lr": report.lr,
                "train": dict(report.train),
                "grad_weights": [g.copy() for g in report.grad_weights],
                "grad_biases": [g.copy() for g in report.grad_biases],
            }
        )


def test_one_training_epoch_applies_the_hand_worked_update() -> None:
    network = _hand_network()
    capture = _Capture()
    history = engine.train(
        network, engine.make_optimizer("gd", LR_HAND), X_HAND, Y_HAND, epochs=1, loss="mse", observers=[capture]
    )

    # Full batch: the reported loss is that of the weights at the start of the epoch.
    assert history.metrics["train_loss"] == [pytest.approx(LOSS, abs=TOLERANCE)]
    (report,) = capture.reports
    assert report["lr"] == LR_HAND
    np.testing.assert_allclose(report["grad_weights"][0], GRAD_W1, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(report["grad_biases"][0], GRAD_B1, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(report["grad_weights"][1], GRAD_W2, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(report["grad_biases"][1], GRAD_B2, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(network.weights[0], NEW_W1, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(network.biases[0], NEW_B1, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(network.weights[1], NEW_W2, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(network.biases[1], NEW_B2, rtol=0, atol=TOLERANCE)


# ---------------------------------------------------------------------------------------------
# Optimizers: two steps on w = [1, -2] with g1 = [0.5, -1], then g2 = [0.1, 0.2]; lr = 0.1
# ---------------------------------------------------------------------------------------------

W0 = [1.0, -2.0]
G1 = [0.5, -1.0]
G2 = [0.1, 0.2]


def _two_steps(optimizer: engine.Optimizer) -> tuple[list[float], list[float]]:
    params = np.array(W0)
    optimizer.reset(2, np.dtype(np.float64))
    optimizer.start_epoch(0, 1)
    optimizer.step(params, np.array(G1))
    after_one = params.tolist()
    optimizer.step(params, np.array(G2))
    return after_one, params.tolist()


def test_gradient_descent_two_steps() -> None:
    # w1 = w0 - 0.1 g1 = [1 - 0.05, -2 + 0.1] = [0.95, -1.9]
    # w2 = w1 - 0.1 g2 = [0.95 - 0.01, -1.9 - 0.02] = [0.94, -1.92]
    after_one, after_two = _two_steps(engine.make_optimizer("gd", 0.1))
    assert after_one == pytest.approx([0.95, -1.9], abs=TOLERANCE)
    assert after_two == pytest.approx([0.94, -1.92], abs=TOLERANCE)


def test_momentum_two_steps() -> None:
    # mu = 0.9, v0 = 0.
    # v1 = 0.9*0 - 0.1 g1 = [-0.05, 0.1];            w1 = w0 + v1 = [0.95, -1.9]
    # v2 = 0.9 v1 - 0.1 g2 = [-0.045 - 0.01, 0.09 - 0.02] = [-0.055, 0.07]
    # w2 = w1 + v2 = [0.95 - 0.055, -1.9 + 0.07] = [0.895, -1.83]
    after_one, after_two = _two_steps(engine.make_optimizer("momentum", 0.1, momentum=0.9))
    assert after_one == pytest.approx([0.95, -1.9], abs=TOLERANCE)
    assert after_two == pytest.approx([0.895, -1.83], abs=TOLERANCE)


def test_nesterov_two_steps() -> None:
    # mu = 0.9, v0 = 0; v <- mu v + g;  w <- w - lr (g + mu v).
    # v1 = g1 = [0.5, -1];  w1 = w0 - 0.1 (g1 + 0.9 g1) = w0 - 0.19 g1 = [1 - 0.095, -2 + 0.19]
    #                                                                  = [0.905, -1.81]
    # v2 = 0.9 v1 + g2 = [0.45 + 0.1, -0.9 + 0.2] = [0.55, -0.7]
    # g2 + 0.9 v2 = [0.1 + 0.495, 0.2 - 0.63] = [0.595, -0.43]
    # w2 = w1 - 0.1 [0.595, -0.43] = [0.905 - 0.0595, -1.81 + 0.043] = [0.8455, -1.767]
    after_one, after_two = _two_steps(engine.make_optimizer("nesterov", 0.1, momentum=0.9))
    assert after_one == pytest.approx([0.905, -1.81], abs=TOLERANCE)
    assert after_two == pytest.approx([0.8455, -1.767], abs=TOLERANCE)


def test_adam_two_steps() -> None:
    # Both steps fall in one epoch: t counts updates, so the second uses the t = 2 corrections.
    # b1 = 0.9, b2 = 0.999, eps = 1e-8, m0 = s0 = 0.
    # t = 1: m = 0.1 g1 = [0.05, -0.1];  s = 0.001 g1^2 = [0.00025, 0.001]
    #        m_hat = m / (1 - 0.9) = [0.5, -1];  s_hat = s / (1 - 0.999) = [0.25, 1]
    #        step = 0.1 m_hat / (sqrt(s_hat) + eps) = 0.1 [0.5/0.50000001, -1/1.00000001]
    #             = [0.099999998, -0.09999999900]
    #        w1 = [0.900000002, -1.900000001]
    # t = 2: m = 0.9 [0.05, -0.1] + 0.1 [0.1, 0.2] = [0.045 + 0.01, -0.09 + 0.02] = [0.055, -0.07]
    #        s = 0.999 [0.00025, 0.001] + 0.001 [0.01, 0.04]
    #          = [0.00024975 + 0.00001, 0.000999 + 0.00004] = [0.00025975, 0.001039]
    #        1 - 0.9^2 = 0.19;  1 - 0.999^2 = 0.001999
    #        m_hat = [0.055/0.19, -0.07/0.19] = [0.289474, -0.368421]
    #        s_hat = [0.00025975/0.001999, 0.001039/0.001999] = [0.129940, 0.519760]
    #        sqrt(s_hat) = [0.360472, 0.720944]
    #        m_hat / sqrt(s_hat) = [0.803041, -0.511026]
    #        w2 = w1 - 0.1 [0.803041, -0.511026] = [0.900000 - 0.080304, -1.900000 + 0.051103]
    #           = [0.819696, -1.848897]
    after_one, after_two = _two_steps(engine.make_optimizer("adam", 0.1, beta1=0.9, beta2=0.999, eps=1e-8))
    assert after_one == pytest.approx([0.900000002, -1.900000001], abs=TOLERANCE)
    assert after_two == pytest.approx([0.81969591, -1.84889739], abs=TOLERANCE)


def test_adam_first_step_moves_every_coordinate_by_lr_whatever_the_gradient_scale() -> None:
    # t = 1: m_hat = g and s_hat = g^2, so the step is lr g / (|g| + eps) = lr sign(g) up to eps.
    optimizer = engine.make_optimizer("adam", 0.01)
    params = np.zeros(3)
    optimizer.reset(3, np.dtype(np.float64))
    optimizer.start_epoch(0, 1)
    optimizer.step(params, np.array([1e-3, -5.0, 200.0]))
    assert params.tolist() == pytest.approx([-0.01, 0.01, -0.01], abs=1e-7)


# ---------------------------------------------------------------------------------------------
# Schedules (base lr 0.1)
# ---------------------------------------------------------------------------------------------


def test_constant_schedule() -> None:
    schedule = engine.Schedule("constant")
    assert [schedule.lr_at(0.1, epoch, 10) for epoch in range(10)] == [0.1] * 10


def test_step_schedule_halves_every_three_epochs() -> None:
    # lr * 0.5 ** floor(e / 3): epochs 0-2 -> 0.1, 3-5 -> 0.05, 6-8 -> 0.025, 9 -> 0.0125
    schedule = engine.Schedule("step", step_size=3, gamma=0.5)
    expected = [0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125]
    assert [schedule.lr_at(0.1, epoch, 10) for epoch in range(10)] == pytest.approx(expected, abs=1e-12)


def test_exponential_schedule() -> None:
    # lr * 0.9 ** e: 0.1, 0.09, 0.081, 0.0729, 0.06561
    schedule = engine.Schedule("exponential", gamma=0.9)
    expected = [0.1, 0.09, 0.081, 0.0729, 0.06561]
    assert [schedule.lr_at(0.1, epoch, 5) for epoch in range(5)] == pytest.approx(expected, abs=1e-12)


def test_cosine_schedule() -> None:
    # min_lr + (lr - min_lr) (1 + cos(pi e / 4)) / 2 with min_lr = 0.01, 4 epochs:
    #   e=0: 0.01 + 0.09 * (1 + 1) / 2        = 0.1
    #   e=1: 0.01 + 0.09 * (1 + 0.707107) / 2 = 0.01 + 0.076820 = 0.086820
    #   e=2: 0.01 + 0.09 * (1 + 0) / 2        = 0.055
    #   e=3: 0.01 + 0.09 * (1 - 0.707107) / 2 = 0.01 + 0.013180 = 0.023180
    schedule = engine.Schedule("cosine", min_lr=0.01)
    values = [schedule.lr_at(0.1, epoch, 4) for epoch in range(4)]
    assert values == pytest.approx([0.1, 0.0868198052, 0.055, 0.0231801948], abs=1e-9)
    # Never below min_lr, and it reaches min_lr only after the last epoch (e = total).
    assert schedule.lr_at(0.1, 4, 4) == pytest.approx(0.01, abs=1e-15)


class _LearningRates(engine.Observer):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_epoch_end(self, report: engine.EpochReport) -> None:
        self.lrs.append(report.lr)


def test_the_optimizer_applies_the_scheduled_rate_of_each_epoch() -> None:
    # A 1-1 identity network on one sample x = 1, y = 0 with mse: E = (w + b)^2, so
    # dE/dw = dE/db = 2 (w + b) and each gd step sets s = w + b to s (1 - 4 lr).
    # Step schedule, lr 0.1 then 0.05 from epoch 2 on, starting at w = 1, b = 0 (s = 1):
    #   epoch 0: s = 1 * (1 - 0.4) = 0.6;  epoch 1: s = 0.6 * 0.6 = 0.36
    #   epoch 2: s = 0.36 * (1 - 0.2) = 0.288;  epoch 3: s = 0.288 * 0.8 = 0.2304
    network = engine.MLP([1, 1], np.random.default_rng(0), output_activation="identity")
    network.params[...] = [1.0, 0.0]
    observer = _LearningRates()
    optimizer = engine.make_optimizer("gd", 0.1, schedule=engine.Schedule("step", step_size=2, gamma=0.5))
    history = engine.train(network, optimizer, [[1.0]], [[0.0]], epochs=4, observers=[observer])
    assert observer.lrs == pytest.approx([0.1, 0.1, 0.05, 0.05], abs=1e-15)
    # train_loss is s^2 at the start of each epoch: 1, 0.36, 0.1296, 0.082944
    assert history.metrics["train_loss"] == pytest.approx([1.0, 0.36, 0.1296, 0.082944], abs=1e-12)
    assert float(network.params.sum()) == pytest.approx(0.2304, abs=1e-12)
    assert optimizer.start_epoch(3, 4) == pytest.approx(0.05, abs=1e-15)
    assert optimizer.lr == pytest.approx(0.05, abs=1e-15)
