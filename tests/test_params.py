"""The notebook parameter loader: merge order, strict keys and types, and every notebook's parameters cell."""
import ast
import logging
from pathlib import Path

import pytest

from minigpt.params import ParameterError, all_parameter_names, load_params, registry

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_SECTIONS = {"01_data_clean": "clean", "02_tokenizer": "tokenizer", "03_pretrain": "pretrain",
                     "04_sft": "sft", "05_generate": "generate", "06_evaluate": "evaluate"}


def write_yaml(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_merge_order_defaults_file_section_explicit(tmp_path):
    cfg = write_yaml(tmp_path, "batch_size: 4\nlearning_rate: 0.01\npretrain:\n  learning_rate: 0.02\n  max_steps: 7\n")
    P = load_params("pretrain", {"config": cfg, "max_steps": 9})
    assert P.batch_size == 4            # file top level
    assert P.learning_rate == 0.02      # the notebook's block beats the top level
    assert P.max_steps == 9             # explicit beats both
    assert P.min_lr == 1e-4             # dataclass default
    # the sft notebook ignores the pretrain block and keeps its fine-tuning default
    S = load_params("sft", {"config": cfg})
    assert S.learning_rate == 0.01 and S.max_steps == 1000 and S.warmup_steps == 100


def test_injected_section_dict_from_papermill_f(tmp_path):
    # `papermill -f params/x.yaml` injects each block as a dict variable named after it
    ns = {"In": ["# Parameters\nconfig = 'ci'\npretrain = {'max_steps': 3}\nsft = {'max_steps': 4}\n"],
          "config": "ci", "pretrain": {"max_steps": 3}, "sft": {"max_steps": 4}}
    assert load_params("pretrain", ns).max_steps == 3
    assert load_params("sft", ns).max_steps == 4


def test_unknown_key_in_cell_is_named_with_suggestion():
    ns = {"In": ["# Parameters\nlearnin_rate = 0.1\n"], "learnin_rate": 0.1}
    with pytest.raises(ParameterError, match=r"unknown parameter 'learnin_rate'.*learning_rate"):
        load_params("pretrain", ns)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    cfg = write_yaml(tmp_path, "batch_sise: 3\n")
    with pytest.raises(ParameterError, match=r"p\.yaml: unknown key 'batch_sise'"):
        load_params("pretrain", {"config": cfg})
    cfg = write_yaml(tmp_path, "sft:\n  lora_rnk: 3\n")
    with pytest.raises(ParameterError, match=r"unknown key 'sft\.lora_rnk'"):
        load_params("sft", {"config": cfg})


@pytest.mark.parametrize("key,value,msg", [
    ("batch_size", "eight", "batch_size: expected an integer"),
    ("learning_rate", "fast", "learning_rate: expected a number"),
    ("enable_compile", 3, "enable_compile: expected true or false"),
    ("batch_size", True, "batch_size: expected an integer"),
    ("device", 0, "device: expected a string"),
])
def test_wrong_types_are_named(key, value, msg):
    with pytest.raises(ParameterError, match=msg):
        load_params("pretrain", {key: value})


def test_gentle_coercions():
    P = load_params("pretrain", {"max_steps": "12", "learning_rate": 1, "sample_prompts": "a,b"})
    assert P.max_steps == 12 and P.learning_rate == 1.0 and P.sample_prompts == ["a", "b"]


def test_env_config_and_run_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGPT_CONFIG", "ci")
    monkeypatch.setenv("MINIGPT_RUN_DIR", str(tmp_path / "r"))
    P = load_params("pretrain", {})
    assert P.config == "ci" and P.d_model == 64 and P.run_dir == tmp_path / "r"
    assert P.paths["tokens"] == tmp_path / "r" / "tokens"


def test_preset_warmup_is_clamped_but_explicit_is_not(caplog):
    with caplog.at_level(logging.WARNING, logger="minigpt.params"):
        P = load_params("pretrain", {"config": "medium", "max_steps": 2})
    # scaled to the run: at most a tenth of max_steps (here 0), so even a smoke test decays
    assert P.warmup_steps == 0 and "is more than a tenth of max_steps=2" in caplog.text
    P = load_params("pretrain", {"config": "medium", "max_steps": 2, "warmup_steps": 5})
    assert P.warmup_steps == 5  # left for TrainConfig.validate to reject, naming the key


def test_missing_config_lists_available():
    with pytest.raises(ParameterError, match=r"nope\.yaml not found; expected one of \['ci', 'medium', 'small', 'tiny'\]"):
        load_params("pretrain", {"config": "nope"})


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "ci"])
def test_shipped_param_files_load_for_every_notebook(name):
    for section in NOTEBOOK_SECTIONS.values():
        P = load_params(section, {"config": name})
        assert P.config == name


def _parameters_cell_names(path: Path) -> set[str]:
    src = path.read_text(encoding="utf-8")
    cell = src.split('# %% tags=["parameters"]', 1)[1].split("# %%", 1)[0]
    return {t.id for node in ast.walk(ast.parse(cell)) if isinstance(node, ast.Assign) for t in node.targets}


@pytest.mark.parametrize("notebook,section", sorted(NOTEBOOK_SECTIONS.items()))
def test_parameters_cells_only_hold_registered_names(notebook, section):
    names = _parameters_cell_names(ROOT / "notebooks" / f"{notebook}.py")
    assert {"config", "run_dir"} <= names
    assert names <= set(registry(section)), names - set(registry(section))


def test_seed_flag_names_are_accepted():
    names = all_parameter_names()
    for flag in ("learning_rate", "max_steps", "batch_size", "warmup_steps", "save_steps", "output_dir",
                 "use_full_data", "data_files", "max_data_size", "tokenizer_vocab_size", "retrain_tokenizer",
                 "enable_compile", "num_threads", "dataloader_workers", "accumulation_steps", "grad_clip",
                 "use_ema", "early_stopping", "patience", "eval_interval", "top_k", "top_p", "temperature",
                 "repetition_penalty", "no_repeat_ngram_size", "keep_last_n_checkpoints", "permanent_checkpoints"):
        assert flag in names, flag


def test_seed_aliases_map_to_canonical_names():
    P = load_params("pretrain", {"max_lr": 0.004, "max_iters": 17, "checkpoint_interval": 5, "out_dir": "x",
                                 "grad_accumulation_steps": 2, "num_workers": 1, "compile": True, "context_length": 64})
    assert (P.learning_rate, P.max_steps, P.save_steps, P.output_dir) == (0.004, 17, 5, "x")
    assert (P.accumulation_steps, P.dataloader_workers, P.enable_compile, P.seq_len) == (2, 1, True, 64)
    G = load_params("generate", {"greedy": True, "model_path": "ck", "batch_file": "p.txt"})
    assert G.do_sample is False and G.checkpoint == "ck" and G.prompts_file == "p.txt"
    with pytest.raises(ParameterError, match="max_lr: alias of learning_rate, but both are set"):
        load_params("pretrain", {"max_lr": 0.1, "learning_rate": 0.2})


def test_token_files_as_input_seed_004(tmp_path):
    """train_data / val_data take .npy and raw .bin token files; a raw .bin needs token_dtype."""
    import numpy as np
    import torch

    from minigpt.train.pretrain import build_pretrain_trainer
    from minigpt.data.tokenizer import TokenizerConfig, train_tokenizer

    run = tmp_path / "run"
    tok = train_tokenizer(["你好，世界。今天天气很好。"] * 50, TokenizerConfig(tokenizer_vocab_size=300, min_frequency=1))
    tok.save(run / "tokenizer")
    np.save(tmp_path / "train.npy", (np.arange(5000) % 250).astype(np.int32))
    (np.arange(3000) % 250).astype(np.uint16).tofile(tmp_path / "val.bin")
    base = dict(config="ci", run_dir=str(run), max_steps=2, warmup_steps=1)
    P = load_params("pretrain", {**base, "train_data": str(tmp_path / "train.npy"), "val_data": str(tmp_path / "val.bin"),
                                 "token_dtype": "uint16"})
    t = build_pretrain_trainer(P)
    assert len(t.train_batches.tokens) == 5000 and int(t.train_batches.tokens[251]) == 1
    assert torch.equal(t.eval_batches[0][0][0, :3], torch.tensor([0, 1, 2]))
    P = load_params("pretrain", {**base, "train_data": str(tmp_path / "val.bin")})
    with pytest.raises(ParameterError, match="token_dtype: required"):
        build_pretrain_trainer(P)


def test_run_name_names_the_run_folder():
    P = load_params("pretrain", {"run_name": "exp1"})
    assert P.run_dir.name == "exp1" and P.run_dir.parent.name == "runs" and P.wandb_run_name == "exp1"
    P = load_params("pretrain", {"run_name": "exp1", "run_dir": "runs/other"})
    assert P.run_dir.name == "other"
