"""`babylm-ds cache verify DIR` (exit 0 ok / 1 broken) and `babylm-ds cache info DIR`."""
import argparse
import json

from .format import load_manifest, verify


def main(argv=None):
    parser = argparse.ArgumentParser(prog="babylm-ds cache", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("verify", help="check manifest, coverage, sizes and sha256 of every shard").add_argument("dir")
    sub.add_parser("info", help="print the manifest's config and stats").add_argument("dir")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        manifest = load_manifest(args.dir)
        print(json.dumps({"config": manifest["config"], "stats": manifest.get("stats"),
                          "shards": len(manifest["shards"])}, indent=2))
        return 0
    problems = verify(args.dir)
    if problems:
        print(f"cache {args.dir}: BROKEN ({len(problems)} problem(s))\n  " + "\n  ".join(problems))
        return 1
    manifest = load_manifest(args.dir)
    cfg = manifest["config"]
    print(f"cache {args.dir}: OK ({len(manifest['shards'])} shards, {cfg['num_sequences']} sequences, "
          f"k={cfg['k']}, {manifest['stats']['bytes_per_token']:.0f} bytes/token)")
    return 0
