#!/usr/bin/env bash
# Gather into .whl/ (git-ignored) every wheel the GPU commands need that the lent GPU machine lacks
# (Python 3.12, linux x86_64, no network): `python scripts/gpu_wheels.py plan` names them, at the versions
# installed here. DeepSpeed has no wheel on the registry: it is built here as pure Python (DS_BUILD_OPS=0;
# its ops would JIT-compile there, but ZeRO-2 with our torch AdamW loads none). Ends with the offline
# completeness check (`gpu_wheels.py check`). Re-running downloads only what is missing.
# Usage: bash scripts/gpu_wheels.sh [DIR]   (default .whl; python = the project's environment)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
dest=${1:-.whl}
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$py" scripts/gpu_wheels.py plan >"$dest/.plan"
while IFS== read -r name _ version; do
  stem=$(echo "$name" | tr - _)
  if compgen -G "$dest/${stem}-${version}-*.whl" >/dev/null; then continue; fi
  if [[ $name == deepspeed ]]; then
    tmp=$(mktemp -d)
    "$py" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "deepspeed==$version"
    DS_BUILD_OPS=0 DS_ACCELERATOR=cuda "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dest" \
      "$tmp"/deepspeed-*.tar.gz
    rm -rf "$tmp"
  else
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d "$dest" "$name==$version"
  fi
done <"$dest/.plan"
rm -f "$dest/.plan"
# pip's own view: each wheel installs for CPython 3.12 on linux x86_64, offline
"$py" -m pip install -q --dry-run --no-index --no-deps --find-links "$dest" --python-version 3.12 \
  --implementation cp "${platforms[@]}" --only-binary=:all: --target "$(mktemp -d)" \
  $("$py" scripts/gpu_wheels.py plan | grep -v '^deepspeed==')
"$py" -m pip install -q --dry-run --no-index --no-deps --find-links "$dest" --target "$(mktemp -d)" deepspeed
"$py" scripts/gpu_wheels.py check "$dest"
du -sh "$dest"
