"""`manifest.json` of an exported model folder: the size and sha256 of every file of the model, written at
export and checked before any command reads the folder (eval, generate, finetune, teachers, a student
--model): a truncated, replaced or edited file is one line naming it, before any library parses it.

Policy: a folder without manifest.json is refused (every babylm-ds export has one) unless --no-verify is
given, e.g. for a model folder from elsewhere. Weights, config or code files the manifest does not list are
refused too (transformers would read or run them); other added files (the model card, eval outputs in a
subfolder) are not the model and are ignored. Older exports list sha256 strings without sizes: accepted.
"""
import contextlib
import os

from babylm_ds.utils.cli import one_line
from babylm_ds.utils.io import atomic_write_json, read_json, sha256_file

MANIFEST = "manifest.json"
CHECKSUMS = "checksums.json"  # a sealed DeepSpeed checkpoint's listing (training.guard.seal_checkpoint)
UNLISTED_REFUSED = (".safetensors", ".bin", ".pt", ".pth", ".py", "config.json")  # what transformers reads or runs


def write_manifest(folder):
    """Write `folder`/manifest.json listing {file: {"size", "sha256"}} of every file in it."""
    files = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)) and f != MANIFEST)
    atomic_write_json(os.path.join(folder, MANIFEST),
                      {f: {"size": os.path.getsize(os.path.join(folder, f)),
                           "sha256": sha256_file(os.path.join(folder, f))} for f in files})


def verify_model_dir(folder, verify=True, listing=MANIFEST):
    """ValueError (one line, naming the file and the fix) unless every file `folder`/manifest.json lists is
    there with its size and sha256, and no weights/config/code file is unlisted. `verify=False` (--no-verify)
    skips the check. Sizes are compared before anything is hashed. `listing`: another file of the same form
    (a DeepSpeed checkpoint's checksums.json, written when it was sealed)."""
    if not verify:
        return
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    path = os.path.join(folder, listing)
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no {listing}, so its files cannot be verified (babylm-ds writes one with "
                         "every export and checkpoint); pass --no-verify to load it unverified")
    entries = read_json(path, "re-export the model, or pass --no-verify to load it unverified")
    if not isinstance(entries, dict):
        raise ValueError(f"{path} should map file names to sizes and sha256; re-export the model, or pass --no-verify")
    entries = {name: v if isinstance(v, dict) else {"sha256": v} for name, v in entries.items()}
    fix = "copy the folder again or re-export it"
    for name, entry in sorted(entries.items()):
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise ValueError(f"{file} is missing (listed in {listing}); {fix}")
        if "size" in entry and os.path.getsize(file) != entry["size"]:
            raise ValueError(f"{file} has {os.path.getsize(file):,} bytes, {listing} lists {entry['size']:,} "
                             f"(truncated or replaced); {fix}")
    for name, entry in sorted(entries.items()):
        if sha256_file(os.path.join(folder, name)) != entry.get("sha256"):
            raise ValueError(f"{os.path.join(folder, name)} does not match its sha256 in {listing} (corrupted, or "
                             f"{listing} was edited); {fix}")
    for name in sorted(os.listdir(folder)):
        if name not in entries and name.endswith(UNLISTED_REFUSED) and os.path.isfile(os.path.join(folder, name)):
            raise ValueError(f"{os.path.join(folder, name)} is not listed in {listing} (added after export?); "
                             "remove it, or pass --no-verify")


@contextlib.contextmanager
def loading(folder):
    """Around reading a model folder with a library: any error it raises (a SafetensorError on a truncated
    file, a JSON or key error in a config, a shape mismatch) becomes a one-line ValueError naming the folder.
    With --debug the original traceback is kept (chained)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001  every library error while loading is the folder's fault, in one line
        raise ValueError(f"cannot load the model in {folder}: {type(e).__name__}: {one_line(e)[:400]}") from e


def add_verify_arg(parser):
    """--no-verify (babylm_ds.config's `model.no_verify`) on an argparse parser, as `args.no_verify`."""
    from babylm_ds.config import FIELDS, add_field

    add_field(parser, FIELDS["model.no_verify"], dest="no_verify")
    return parser
