"""What every launcher does first (`import _preamble` is its first statement), before its slow imports:
record the stop signals (SIGTERM, SIGUSR1) that come while it imports and who launched it, put this checkout
first on sys.path, keep DeepSpeed's compiled ops in the checkout, and ask to die with its launcher
(`babylm_ds.utils.cli.die_with_launcher`). The launcher then hands STOPS and ANCESTORS to
`babylm_ds.training.preempt` (`install`, `relay` or `uninstall`), which acts on them."""
import contextlib
import os
import signal
import sys

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
STOPS = []  # stop signals that came while the launcher imported
if os.path.dirname(os.path.abspath(sys.argv[0])) == HERE:  # a launcher run as a script (not one a test imports)
    for _s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(_s, lambda signum, _frame: STOPS.append(signum))
ANCESTORS = []  # [(pid, argv)] of the parent, its parent, ... now: a launcher gone by `preempt.install` stops it
with contextlib.suppress(psutil.Error):
    ANCESTORS += [(d["pid"], d["cmdline"] or []) for d in (p.as_dict(["pid", "cmdline"])
                                                          for p in psutil.Process().parents()[:3])]

ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
# DeepSpeed compiles its CPU ops (≈3-4 min, once) into TORCH_EXTENSIONS_DIR: keep them in the project.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".torch_extensions"))

from babylm_ds.utils.cli import die_with_launcher  # noqa: E402

die_with_launcher()
