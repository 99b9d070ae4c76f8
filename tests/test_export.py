"""Exported model folders: `import babylm_ds` registers the model families; the generated
trust_remote_code files run where babylm_ds cannot be imported and equal the project's model; the card."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from babylm_ds.models import BabyHGRNConfig, BabyHGRNForCausalLM
from babylm_ds.models.card import CARD_FILES, update_scores
from babylm_ds.models.registry import family_names, load_family
from babylm_ds.models.remote_code import generate
from babylm_ds.training import export_hf
from launch import ROOT

# Refuses every import of babylm_ds, whatever sys.path holds (the venv has it installed in editable mode).
HIDE = textwrap.dedent("""
    import sys
    class _Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "babylm_ds":
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
    sys.meta_path.insert(0, _Hide())
    sys.path = [p for p in sys.path if p not in ("", ".", %r)]
""") % str(ROOT)

LOAD = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    ids = torch.load(sys.argv[2])
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids[:1, :9], max_new_tokens=24, do_sample=False)
    torch.save({"logits": logits, "generated": gen, "class": type(model).__module__,
                "babylm_ds": sorted(m for m in sys.modules if m.startswith("babylm_ds"))}, sys.argv[3])
""")


def _python(code, *argv, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(cwd / "hf_modules"), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small BabyHGRN (sharpened lm head, non-trivial lower bounds) exported as the trainer does."""
    torch.manual_seed(0)
    config = BabyHGRNConfig(vocab_size=211, hidden_size=64, num_hidden_layers=3, expand_ratio=16, intermediate_size=96)
    model = BabyHGRNForCausalLM(config).eval()
    with torch.no_grad():
        model.model.lower_bounds.normal_()
        model.lm_head.weight.mul_(40.0)
    out = tmp_path_factory.mktemp("export") / "final"
    export_hf(model, model.state_dict(), None, str(out))
    return model, out


def test_generated_files_and_auto_map(exported):
    _, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_babyhgrn.BabyHGRNConfig",
                                  "AutoModel": "modeling_babyhgrn.BabyHGRNModel",
                                  "AutoModelForCausalLM": "modeling_babyhgrn.BabyHGRNForCausalLM",
                                  "AutoModelForSequenceClassification": "modeling_babyhgrn.BabyHGRNForSequenceClassification"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"configuration_babyhgrn.py", "modeling_babyhgrn.py", "config.json"} <= set(manifest)
    modeling = (out / "modeling_babyhgrn.py").read_text()
    for source in ("ops/hgrn2/chunk.py", "ops/hgrn2/api.py", "layers/hgrn2.py", "models/babyhgrn/modeling.py"):
        assert f"# ---- babylm_ds/{source} ----" in modeling
    # the project is imported only inside try blocks (its compiled kernels), never at module level
    top = [line for line in modeling.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top if "babylm_ds" in line] and "from .configuration_babyhgrn import BabyHGRNConfig" in top


def test_loads_and_generates_without_babylm_ds(exported, tmp_path):
    """trust_remote_code in a process that cannot import babylm_ds: same logits, same greedy tokens."""
    model, out = exported
    ids = torch.randint(3, 211, (2, 80), generator=torch.Generator().manual_seed(1))  # T > one 64-step chunk
    torch.save(ids, tmp_path / "ids.pt")
    _python(HIDE + LOAD, out, tmp_path / "ids.pt", tmp_path / "got.pt", cwd=tmp_path)
    got = torch.load(tmp_path / "got.pt")
    assert got["babylm_ds"] == [] and got["class"].startswith("transformers_modules.")
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids[:1, :9], max_new_tokens=24, do_sample=False)
        model.config.backend = "torch"  # the backend the clean process falls back to
        torch_logits = model(ids).logits
        model.config.backend = "auto"
    assert torch.equal(got["logits"], torch_logits)
    torch.testing.assert_close(got["logits"], logits, rtol=1e-5, atol=1e-4)
    assert torch.equal(got["generated"], gen)


def test_import_babylm_ds_alone_registers(exported, tmp_path):
    """A folder without auto_map loads after `import babylm_ds`, which does not pull in the heavy stack."""
    model, _ = exported
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    code = textwrap.dedent("""
        import sys, babylm_ds
        from transformers import AutoModelForCausalLM
        heavy = [m for m in ("deepspeed", "datasets", "babylm_ds.models.zoo", "babylm_ds.training") if m in sys.modules]
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
        print(type(model).__module__, heavy)
    """)
    proc = _python(code, plain, cwd=ROOT)
    assert proc.stdout.split() == ["babylm_ds.models.babyhgrn.modeling", "[]"]


def test_generator_refuses_name_clashes(tmp_path, monkeypatch):
    pkg = tmp_path / "babylm_ds_clash"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import torch\n\nSCALE = 2\n\n\ndef f(x):\n    return SCALE * x\n")
    (pkg / "b.py").write_text('"""b."""\nfrom babylm_ds_clash.a import f\n\nSCALE = 3\n')
    (pkg / "c.py").write_text('"""c."""\nfrom babylm_ds_clash.a import f\n\n\ndef g(x):\n    return f(x) + 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("babylm_ds.models.remote_code._ROOT", "babylm_ds_clash")
    monkeypatch.setattr("babylm_ds.models.remote_code._REPO", str(tmp_path))
    with pytest.raises(ValueError, match="'SCALE' is defined in both babylm_ds_clash.a and babylm_ds_clash.b"):
        generate("babylm_ds_clash.b")
    source, namespace = generate("babylm_ds_clash.c"), {}
    exec(source, namespace)
    assert namespace["g"](5) == 11 and namespace["SCALE"] == 2
    assert [line for line in source.splitlines() if line.startswith(("import", "from"))] == ["import torch"]


def test_model_card_written_and_scores_update_outside_manifest(exported, tmp_path):
    model, _ = exported
    card = {"name": "student", "data": {"dir": "/d", "corpus": "embedded", "word_budget": 10_000_000, "words": 300_000,
                                        "words_by_source": {"childes": 100_000, "gutenberg": 200_000},
                                        "tokens_per_word": 1.4, "seq_len": 128, "vocab_size": 211, "train_sequences": 9},
            "training": {"command": "deepspeed --num_gpus 2 launchers/distill.py --model babyhgrn-tiny", "steps": 150,
                         "world_size": 2, "train_tokens": 307_200, "train_loss": 4.5, "dev_loss": 4.9, "seed": 0,
                         "lr": 3e-3, "schedule": "cosine", "micro_batch": 8, "grad_accum": 1, "zero_stage": 2,
                         "bf16": False},
            "distillation": {"teachers": [{"name": "teacher-llama/final", "model_type": "llama", "weight": 0.5},
                                          {"name": "teacher-gpt2/final", "model_type": "gpt2", "weight": 0.5}],
                             "k": 32, "alpha": 0.5, "temperature": 2.0}}
    out = tmp_path / "final"
    export_hf(model, model.state_dict(), None, str(out), card)
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: transformers\n") and "- knowledge-distillation" in readme
    n = sum(p.numel() for p in model.parameters())
    for fact in (f"| parameters | {n:,} |", "| expand_ratio | 16 |", "300,000 words", "word budget 10,000,000",
                 card["training"]["command"], "150 optimizer steps", "ZeRO stage 2", "teacher-gpt2/final (gpt2, weight 0.5)",
                 "trust_remote_code=True", "Not evaluated yet"):
        assert fact in readme, fact
    manifest = (out / "manifest.json").read_text()
    assert not set(CARD_FILES) & set(json.loads(manifest))
    result = {"blimp": {"mean": 0.532}, "supplement": {"mean": 0.516}, "macro": 0.524, "limit": 50,
              "perplexity": {"perplexity": 147.14}}
    assert update_scores(str(out), result)
    readme = (out / "README.md").read_text()
    assert "first 50 items per paradigm" in readme and "| blimp | 53.2 |" in readme and "| dev perplexity | 147.1 |" in readme
    assert "Not evaluated yet" not in readme and (out / "manifest.json").read_text() == manifest
    assert not update_scores(str(tmp_path), result)


@pytest.mark.parametrize("name", family_names())
def test_every_family_generates_standalone_code(name):
    """Each model family under babylm_ds/models/ (BabyHGRN, and any added later) exports generated code that
    compiles and imports nothing of babylm_ds at module level."""
    family = load_family(name)
    config_module = family.config_class.__module__
    sources = [generate(config_module),
               generate(family.auto_classes["AutoModelForCausalLM"].__module__, {config_module: f".configuration_{name}"})]
    for source in sources:
        compile(source, f"{name}.py", "exec")
        tops = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in tops if "babylm_ds" in line], tops
    assert f"from .configuration_{name} import {family.config_class.__name__}" in sources[1]
