"""Exported model folders: `import babylm_ds` registers the model families; the generated
trust_remote_code files run where babylm_ds cannot be imported, also under transformers 4.51 (the BabyLM
pipeline's pin), and equal the project's model; the card."""
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from packaging.requirements import Requirement

from babylm_ds.data.tokenizer import load_tokenizer, train_tokenizer
from babylm_ds.models import BabyHGRNConfig, BabyHGRNForCausalLM, BabyLSTMConfig, BabyLSTMForCausalLM, hf_compat
from babylm_ds.models.card import CARD_FILES, update_scores
from babylm_ds.models.registry import family_names, load_family
from babylm_ds.models.remote_code import generate
from babylm_ds.training.trainer import export_hf
from launch import ROOT

# evaluation-pipeline-2025's requirements.txt pins (its datasets and torch pins do not matter for loading);
# BABYLM_DS_EXPORT_PINS="transformers==4.46.3 tokenizers==0.20.3" runs the same check on other versions
PIPELINE_PINS = tuple(os.environ.get("BABYLM_DS_EXPORT_PINS", "").split()) or (
    "transformers==4.51.3", "tokenizers==0.21.1", "huggingface-hub==0.31.0")

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


def _python(code, *argv, cwd, timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(cwd / "hf_modules"), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
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
    assert config["auto_map"] == {
        "AutoConfig": "configuration_babyhgrn.BabyHGRNConfig", "AutoModel": "modeling_babyhgrn.BabyHGRNModel",
        "AutoModelForCausalLM": "modeling_babyhgrn.BabyHGRNForCausalLM",
        "AutoModelForSequenceClassification": "modeling_babyhgrn.BabyHGRNForSequenceClassification"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"configuration_babyhgrn.py", "modeling_babyhgrn.py", "config.json"} <= set(manifest)
    modeling = (out / "modeling_babyhgrn.py").read_text()
    for source in ("ops/hgrn2/chunk.py", "ops/hgrn2/api.py", "layers/hgrn2.py", "models/babyhgrn/modeling.py"):
        assert f"# ---- babylm_ds/{source} ----" in modeling
    # the project is imported only inside try blocks (its compiled kernels), never at module level
    top = [line for line in modeling.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top if "babylm_ds" in line]
    assert "from .configuration_babyhgrn import BabyHGRNConfig" in top


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
    card = {"name": "student",
            "data": {"dir": "/d", "corpus": "embedded", "word_budget": 10_000_000, "words": 300_000,
                     "words_by_source": {"childes": 100_000, "gutenberg": 200_000},
                     "tokens_per_word": 1.4, "seq_len": 128, "vocab_size": 211, "train_sequences": 9},
            "training": {"command": "deepspeed --num_gpus 2 launchers/distill.py --model babyhgrn-tiny",
                         "steps": 150, "world_size": 2, "train_tokens": 307_200, "train_loss": 4.5, "dev_loss": 4.9,
                         "seed": 0, "lr": 3e-3, "schedule": "cosine", "micro_batch": 8, "grad_accum": 1,
                         "zero_stage": 2, "bf16": False},
            "distillation": {"teachers": [{"name": "teacher-llama/final", "model_type": "llama", "weight": 0.5},
                                          {"name": "teacher-gpt2/final", "model_type": "gpt2", "weight": 0.5}],
                             "k": 32, "alpha": 0.5, "temperature": 2.0}}
    out = tmp_path / "final"
    export_hf(model, model.state_dict(), None, str(out), card)
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: transformers\n") and "- knowledge-distillation" in readme
    n = sum(p.numel() for p in model.parameters())
    for fact in (f"| parameters | {n:,} |", "| expand_ratio | 16 |", "300,000 words", "word budget 10,000,000",
                 card["training"]["command"], "150 optimizer steps", "ZeRO stage 2",
                 "teacher-gpt2/final (gpt2, weight 0.5)", "trust_remote_code=True", "Not evaluated yet"):
        assert fact in readme, fact
    manifest = (out / "manifest.json").read_text()
    assert not set(CARD_FILES) & set(json.loads(manifest))
    result = {"blimp": {"mean": 0.532}, "supplement": {"mean": 0.516}, "macro": 0.524, "limit": 50,
              "perplexity": {"perplexity": 147.14}}
    assert update_scores(str(out), result)
    readme = (out / "README.md").read_text()
    assert "first 50 items per paradigm" in readme and "| blimp | 53.2 |" in readme
    assert "| dev perplexity | 147.1 |" in readme
    assert "Not evaluated yet" not in readme and (out / "manifest.json").read_text() == manifest
    assert not update_scores(str(tmp_path), result)


@pytest.mark.parametrize("name", family_names())
def test_every_family_generates_standalone_code(name):
    """Each model family under babylm_ds/models/ (BabyHGRN, and any added later) exports generated code that
    compiles and imports nothing of babylm_ds at module level."""
    family = load_family(name)
    config_module = family.config_class.__module__
    sources = [generate(config_module),
               generate(family.auto_classes["AutoModelForCausalLM"].__module__,
                        {config_module: f".configuration_{name}"})]
    for source in sources:
        compile(source, f"{name}.py", "exec")
        tops = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in tops if "babylm_ds" in line], tops
    assert f"from .configuration_{name} import {family.config_class.__name__}" in sources[1]


def test_transformers_imports_served_by_the_shim():
    """Every generated file takes the names transformers 4.x lacks (`hf_compat.__all__`) from the inlined
    shim, never from transformers; a name imported under another name is assigned after the shim."""
    for name in family_names():
        family = load_family(name)
        config_module = family.config_class.__module__
        for source in (generate(config_module), generate(family.auto_classes["AutoModelForCausalLM"].__module__,
                                                         {config_module: f".configuration_{name}"})):
            assert "# ---- babylm_ds/models/hf_compat.py ----" in source
            tops = [line for line in source.splitlines() if line.startswith("from transformers")]
            imported = {n.strip().split(" as ")[0] for line in tops for n in line.split(" import ")[1].split(",")}
            assert not imported & set(hf_compat.__all__), tops
    modeling = generate("babylm_ds.models.babyhgrn.modeling", {"babylm_ds.models.babyhgrn.configuration": ".c"})
    assert "\ninit = initialization\n" in modeling and modeling.index("init = initialization") < modeling.index(
        "# ---- babylm_ds/models/babyhgrn/modeling.py")


def _unmet(target):
    """Requirements of the distributions in `target` that neither `target` nor this environment meets."""
    def version(name):
        for dist in importlib.metadata.distributions(name=name, path=[str(target)]):
            return dist.version
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    unmet = set()
    for dist in importlib.metadata.distributions(path=[str(target)]):
        for req in map(Requirement, dist.requires or ()):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                if (v := version(req.name)) is None or not req.specifier.contains(v, prereleases=True):
                    unmet.add(f"{req.name}{req.specifier}")
    return sorted(unmet)


_OFFLINE = ("from versions: none", "NewConnectionError", "Failed to establish a new connection",
            "Temporary failure in name resolution", "Network is unreachable", "Max retries exceeded", "timed out")


def pip_target(target, pins):
    """`pip install --target target` of `pins` and of those of their requirements this environment does not meet
    (in rounds until none is left); skips the test when the package registry cannot be reached."""
    todo = list(pins)
    for _ in range(5):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--retries", "1",
                               "--timeout", "60", "--target", str(target), *todo], capture_output=True, text=True)
        if proc.returncode:
            out = proc.stdout + proc.stderr
            if any(marker in out for marker in _OFFLINE):
                pytest.skip(f"package registry unreachable: pip install {' '.join(todo)}: "
                            f"{out.strip().splitlines()[-1]}")
            raise AssertionError(f"pip install {' '.join(todo)} failed:\n{out[-3000:]}")
        if not (todo := _unmet(target)):
            return
    raise AssertionError(f"requirements of {pins} still unmet after 5 rounds: {todo}")


@pytest.fixture(scope="session")
def pipeline_transformers(request, tmp_path_factory):
    """A --target dir with PIPELINE_PINS, kept in pytest's cache dir and reused while it holds the same pins."""
    pins = "\n".join(PIPELINE_PINS)
    cache, name = getattr(request.config, "cache", None), "pins-" + hashlib.sha256(pins.encode()).hexdigest()[:12]
    target = cache.mkdir(name) if cache else tmp_path_factory.mktemp(name)
    stamp = target / "PINS"
    if not (stamp.is_file() and stamp.read_text() == pins):
        shutil.rmtree(target)
        target.mkdir()
        pip_target(target, PIPELINE_PINS)
        stamp.write_text(pins)
    return target


LOAD_ELSEWHERE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])  # e.g. a --target dir of pinned packages, before this environment's
    import torch, transformers
    from transformers import AutoModelForCausalLM, AutoProcessor
    text, ids, got = sys.argv[2], torch.load(sys.argv[3]), {"version": transformers.__version__}
    for folder in sys.argv[5:]:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        # the tokenizer as the pipeline loads it
        processor = AutoProcessor.from_pretrained(folder, padding_side="right", trust_remote_code=True)
        with torch.no_grad():
            got[folder] = {"logits": model(ids).logits, "class": type(model).__module__,
                           "cache": [c.__module__ for c in type(model(ids[:, :3]).past_key_values).__mro__],
                           "generated": model.generate(ids[:1, :9], max_new_tokens=24, do_sample=False),
                           "beams": model.generate(ids[:1, :9], max_new_tokens=8, num_beams=3, do_sample=False),
                           "tokens": processor(text=text)["input_ids"]}
        if model.supports_gradient_checkpointing:  # the same gradients through checkpointed blocks
            model.train()
            grads = []
            for _ in range(2):
                model.zero_grad()
                model(ids, labels=ids).loss.backward()
                grads.append([p.grad.clone() for p in model.parameters()])
                model.gradient_checkpointing_enable()
            got[folder]["checkpointed"] = [m.gradient_checkpointing for m in model.model.layers]
            got[folder]["grad_diff"] = max((a - b).abs().max().item() for a, b in zip(*grads))
        auto_map = json.load(open(f"{folder}/config.json"))["auto_map"]  # every class the folder offers loads
        got[folder]["auto_map"] = {auto: type(getattr(transformers, auto).from_pretrained(
            folder, trust_remote_code=True)).__name__ for auto in auto_map if auto != "AutoConfig"}
    got["babylm_ds"] = sorted(m for m in sys.modules if m.startswith("babylm_ds"))
    torch.save(got, sys.argv[4])
""")
# the cache layer transformers 4.x lacks, taken away from this one (which, unlike the checkpointing layer, it does
# not use itself): the shim's own cache serves
NO_CACHE_LAYER = "import transformers.cache_utils\ndel transformers.cache_utils.LinearAttentionLayer\n"


@pytest.fixture(scope="module")
def exported_pair(tmp_path_factory):
    """A BabyHGRN (own, sharpened LM head) and a BabyLSTM (tied embeddings) exported with the trainer's tokenizer."""
    root = tmp_path_factory.mktemp("pair")
    text = "the cat sat on the mat."
    train_tokenizer([text, "a dog ran to the cat.", "the mat was red."] * 20, vocab_size=300).save_pretrained(
        root / "data/tokenizer")
    tokenizer = load_tokenizer(root / "data")  # as the trainer has it (5.x saves some of its load arguments)
    torch.manual_seed(0)
    hgrn = BabyHGRNForCausalLM(BabyHGRNConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, expand_ratio=16,
                                              intermediate_size=96, backend="torch")).eval()
    lstm = BabyLSTMForCausalLM(BabyLSTMConfig(vocab_size=300, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                              tie_word_embeddings=True)).eval()
    with torch.no_grad():
        hgrn.model.lower_bounds.normal_()
        hgrn.lm_head.weight.mul_(40.0)
    models = {root / "hgrn": hgrn, root / "lstm": lstm}
    for folder, model in models.items():
        export_hf(model, model.state_dict(), tokenizer, str(folder))
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # 5.x wrote TokenizersBackend
        assert not {"is_local", "local_files_only"} & set(tokenizer_config)
        assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "float32"
    return models, tokenizer, text


def _load_elsewhere(exported_pair, tmp_path, prelude, path_first):
    """Load the pair in a process that cannot import babylm_ds (after `prelude`, with `path_first` first on
    sys.path); check the project's logits bit for bit (torch backend), its greedy and beam-search tokens, its
    tokenizer with BOS first and gradient checkpointing. Returns what the process reported."""
    models, tokenizer, text = exported_pair
    ids = torch.randint(3, 300, (2, 70), generator=torch.Generator().manual_seed(1))
    torch.save(ids, tmp_path / "ids.pt")
    _python(HIDE + prelude + LOAD_ELSEWHERE, path_first, text, tmp_path / "ids.pt", tmp_path / "got.pt", *models,
            cwd=tmp_path, timeout=900)
    got = torch.load(tmp_path / "got.pt")
    assert got["babylm_ds"] == []
    bos_first = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    for folder, model in models.items():
        mine = got[str(folder)]
        assert mine["class"].startswith("transformers_modules.")
        with torch.no_grad():
            assert torch.equal(mine["logits"], model(ids).logits)
            assert torch.equal(mine["generated"], model.generate(ids[:1, :9], max_new_tokens=24, do_sample=False))
            beams = model.generate(ids[:1, :9], max_new_tokens=8, num_beams=3, do_sample=False)
            assert torch.equal(mine["beams"], beams)
        assert mine["tokens"] == bos_first
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert mine["auto_map"] == {auto: name.split(".")[1] for auto, name in auto_map.items() if auto != "AutoConfig"}
    hgrn = got[str(next(iter(models)))]
    assert hgrn["checkpointed"] == [True, True] and hgrn["grad_diff"] < 1e-6
    return got


def test_shim_cache_serves_generate(exported_pair, tmp_path):
    """The shim's plain cache object (what transformers 4.x gets), here under this transformers without its
    linear-attention cache layer: the export still equals the project's model, greedy and beam search included."""
    got = _load_elsewhere(exported_pair, tmp_path, NO_CACHE_LAYER, "")
    for folder in exported_pair[0]:
        assert not [m for m in got[str(folder)]["cache"] if m.startswith("transformers.")], got[str(folder)]["cache"]


@pytest.mark.slow
def test_export_loads_in_the_babylm_pipeline_transformers(exported_pair, pipeline_transformers, tmp_path):
    """The pair loaded with trust_remote_code under the BabyLM pipeline's transformers 4.51.3 / tokenizers 0.21.1 /
    huggingface-hub 0.31.0 (installed from the package registry), in a process that cannot import babylm_ds."""
    got = _load_elsewhere(exported_pair, tmp_path, "", pipeline_transformers)
    assert f"transformers=={got['version']}" in PIPELINE_PINS
