"""What a sweep job needs, imported once by the fork server of the ``local`` launcher's workers.

The server imports this module before it forks the first worker, so every worker starts with
the imports done and the first-time costs of a run paid (``warm_up``) instead of paying them
itself. ``gc.freeze()`` comes last: the modules' objects (hundreds of thousands) move out of the
collector's reach in the server and so in every worker, whose collections then scan only what
jobs create.
"""

from runner.process.children import settle_forkserver_signals

settle_forkserver_signals()  # first: a Ctrl-C to the process group must not break the imports

import gc  # noqa: E402

from runner.process import interruption  # noqa: E402

interruption.test_point("forkserver-preload")

import runner.sweeps.local_launcher  # noqa: E402,F401  (what runs a job in a worker: Hydra's job runner)
from runner.sweeps.warm_up import warm_up  # noqa: E402

warm_up()
gc.freeze()
