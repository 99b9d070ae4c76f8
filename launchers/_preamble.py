"""What every launcher does first (`import _preamble` is its first statement), before its slow imports:
remember its launcher's pid, put this checkout first on sys.path, keep DeepSpeed's compiled ops in the
checkout, and ask to die with its launcher (`babylm_ds.utils.cli.die_with_launcher`)."""
import os
import sys

LAUNCHER = os.getppid()  # first thing: a launcher killed while this rank imports must still take it down
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# DeepSpeed compiles its CPU ops (≈3-4 min, once) into TORCH_EXTENSIONS_DIR: keep them in the project.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".torch_extensions"))

from babylm_ds.utils.cli import die_with_launcher  # noqa: E402

die_with_launcher(LAUNCHER)  # before the launcher's own imports: a rank must not outlive its launcher
