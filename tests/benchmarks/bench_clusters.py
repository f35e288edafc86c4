"""Cluster launcher benchmark: the 12-job digits grid on a local 2-CPU Ray cluster against Hydra's
basic launcher (and bprun's local launcher with 2 workers, for reference).

Run from the repository in a virtual environment with the ray extra (pip install -e '.[ray]'):

    python tests/benchmarks/bench_clusters.py [--repeats N]

It prints Markdown (a table, the target met or not, the command that reproduces it); progress
goes to stderr. With the default 3 repeats it takes about 5 minutes on a 2-core machine.

The sweep is ``bprun -m dataset=digits 'model.hidden=[128,64]' trainer.epochs=200
trainer.batch_size=32 optimizer.lr=0.5,1,2 seed=0,1,2,3`` (12 jobs, default telemetry), run
with ``hydra/launcher=basic`` (one job after the other in bprun's process), ``hydra/launcher=ray``
on a cluster started once before the first timed sweep (``ray start --head --num-cpus 2`` on
loopback: its start-up is excluded, each sweep's connection to it and its workers' start-up are
not), and ``hydra.launcher.n_jobs=2``, taking turns. Throughput is jobs per second of a sweep's
wall time. Target: Ray at least 1.3x the basic launcher's. The children's final weights are
compared by (lr, seed) across every sweep for bit-identity.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sweeps import DIGITS_JOBS, DIGITS_SWEEP, sweep, weights_by_job, weights_report
from benchmark_common import REPOSITORY, describe_environment, load_average, log, median, print_report

TARGET_RATIO = 1.3


def start_ray_cluster(folder: Path) -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run(
        [
            ray,
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--temp-dir",
            str(folder),
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
    )
    return f"127.0.0.1:{port}"


def stop_ray_cluster() -> None:
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    started = time.perf_counter()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    environment_lines = describe_environment(["numpy", "mlflow", "hydra-core", "ray", "hydra-ray-launcher"])
    ray_folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        log("starting a 2-CPU Ray cluster on loopback (not timed)")
        address = start_ray_cluster(ray_folder)
        launchers = {
            "basic": ["hydra/launcher=basic"],
            "ray": ["hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}"],
            "local, 2 workers": ["hydra.launcher.n_jobs=2"],
        }
        seconds: dict[str, list[float]] = {name: [] for name in launchers}
        ratios = []
        fingerprints = []
        with tempfile.TemporaryDirectory(prefix="bench-clusters-") as directory:
            scratch = Path(directory)
            os.chdir(scratch)
            log("warm-up (2 epochs, every launcher)")
            for extra in launchers.values():
                sweep([*DIGITS_SWEEP, "trainer.epochs=2", *extra], scratch, "warm-up")
            for repeat in range(arguments.repeats):
                names = list(launchers)
                order = names if repeat % 2 == 0 else names[::-1]
                this_repeat = {}
                for name in order:
                    log(f"repeat {repeat + 1}/{arguments.repeats}: {name}")
                    this_repeat[name], database = sweep([*DIGITS_SWEEP, *launchers[name]], scratch, "digits")
                    fingerprints.append(weights_by_job(database))
                    seconds[name].append(this_repeat[name])
                ratios.append(this_repeat["basic"] / this_repeat["ray"])
            os.chdir(REPOSITORY)
    finally:
        stop_ray_cluster()
        shutil.rmtree(ray_folder, ignore_errors=True)
    ratio = median(seconds["basic"]) / median(seconds["ray"])
    weights_line, weights_verdict = weights_report(fingerprints, "weights identical across launchers")
    lines = [
        f"### The 12-job digits grid (200 epochs, batch 32) by launcher, median of {arguments.repeats}",
        "",
        "| launcher | sweep wall time, s | jobs/s | runs, s |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, values in seconds.items():
        lines.append(
            f"| {name} | {median(values):.2f} | {DIGITS_JOBS / median(values):.3f} | "
            f"{', '.join(f'{value:.2f}' for value in values)} |"
        )
    lines += [
        "",
        f"Ray against the basic launcher (ratio of medians): **{ratio:.2f}x** the throughput; per repeat: "
        f"{', '.join(f'{value:.2f}x' for value in ratios)}.",
        weights_line,
    ]
    verdicts = [
        f"Ray (2 CPUs) / basic launcher throughput: {ratio:.2f}x (target >= {TARGET_RATIO}x): "
        + ("met" if ratio >= TARGET_RATIO else "NOT met"),
        weights_verdict,
    ]
    environment_lines.append(f"- load average at the end {load_average()}")
    print_report("Cluster launcher benchmark", environment_lines, [lines], verdicts, str(REPOSITORY), started)


if __name__ == "__main__":
    main()
