"""Export a minigpt checkpoint as a Hugging Face `transformers` Llama folder.

minigpt's parameter names already mirror `modeling_llama.py`, so the export is a rename
(`layers.0...` -> `model.layers.0...`), a config.json in Llama's vocabulary, and the tokenizer files
(with the ChatML chat template) copied beside them. The tied head is not stored: with
`tie_word_embeddings: true` transformers ties `lm_head.weight` to `model.embed_tokens.weight` on load.
Variants: an untied head is written as `lm_head.weight` with `tie_word_embeddings: false`; `qk_norm` exports
as Qwen3 (`Qwen3ForCausalLM`: Llama plus per-head `self_attn.q_norm`/`k_norm` before RoPE, the same names);
`attention_bias` (q/k/v biases, imported Qwen2 models) exports as Qwen2 (`Qwen2ForCausalLM`), and together with
`qk_norm` is refused (no transformers architecture has both); `mlp="relu2"` has no transformers architecture and
is refused. An imported tokenizer (minigpt.convert) keeps its own chat template and special-token ids.

    python -m minigpt.infer.export runs/demo/sft/final_model runs/demo/hf
    python -m minigpt.export runs/demo/sft/final_model runs/demo/gguf --format gguf --outtype q8_0   # see gguf.py
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..data.tokenizer.special import harden_hf_folder
from ..train.checkpoint import TOKENIZER_FILES, atomic_folder
from ..model.gpt import GPT
from .export_target import check_export_target, write_export_marker

logger = logging.getLogger(__name__)

_EOS_ID, _IM_END_ID, _PAD_ID = 0, 2, 3

def hf_state_dict(model: GPT, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """minigpt weights under HF Llama names (`model.` prefix; lm_head only when untied)."""
    model = getattr(model, "_orig_mod", model)
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            if model.config.tie_word_embeddings:
                continue  # tied: transformers rebuilds it from embed_tokens
            out[name] = t
        elif name.startswith("rope_"):
            continue
        else:
            out["model." + name] = t
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in out.items()}


def check_exportable(cfg: Any) -> None:
    """Raise ValueError for a variant no transformers architecture computes."""
    if cfg.mlp != "swiglu":
        raise ValueError(f"mlp={cfg.mlp!r}: no transformers architecture has this MLP (Llama and Qwen3 use SwiGLU), "
                         "so the model cannot be exported to transformers; train with mlp='swiglu' to export")
    if cfg.attention_bias and cfg.qk_norm:
        raise ValueError("attention_bias with qk_norm: no transformers architecture has q/k/v biases and q/k norms "
                         "(Qwen2 has the biases, Qwen3 the norms), so the model cannot be exported to transformers")


def hf_config(model: GPT, dtype: str = "float32", ids: dict[str, int] | None = None) -> dict[str, Any]:
    """config.json: Llama's, Qwen3's when the model has QK-norm, Qwen2's with q/k/v biases. ids: the
    tokenizer's bos/eos/pad ids (minigpt's own 0, 0, 3 when None)."""
    ids = ids or {"bos_token_id": _EOS_ID, "eos_token_id": _EOS_ID, "pad_token_id": _PAD_ID}
    c = model.config
    check_exportable(c)
    try:
        import transformers
        version = transformers.__version__
    except ImportError:  # export itself does not need transformers
        version = None
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len,
        # transformers >= 5 reads rope_parameters; 4.x reads rope_theta. Both are written.
        "rope_parameters": {"rope_type": "default", "rope_theta": float(c.rope_theta)},
        "rope_theta": float(c.rope_theta),
        "rms_norm_eps": c.rms_norm_eps,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": bool(c.tie_word_embeddings),
        **ids,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if c.qk_norm:
        cfg.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", use_sliding_window=False,
                   sliding_window=None, max_window_layers=c.n_layers)
        del cfg["mlp_bias"]  # not a Qwen3 field
    if c.attention_bias:  # Qwen2: q/k/v biases always on, no attention_bias field
        cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False,
                   sliding_window=None, max_window_layers=c.n_layers)
        del cfg["mlp_bias"], cfg["attention_bias"]
    if version:
        cfg["transformers_version"] = version
    return cfg


def _generation_config(eos_ids: list[int], bos_id: int = _EOS_ID, pad_id: int = _PAD_ID) -> dict[str, Any]:
    # Same stops as minigpt's generator: end of document and end of an assistant turn.
    return {"bos_token_id": bos_id, "eos_token_id": eos_ids, "pad_token_id": pad_id, "do_sample": False}


def export_model(model: GPT, tokenizer_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write `model` plus the tokenizer files of `tokenizer_dir` as a transformers Llama (or Qwen3) folder, atomically.

    `out_dir` must be new, empty or a previous HF export (see `check_export_target`)."""
    check_exportable(model.config)
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype: expected float32 / float16 / bfloat16, got {dtype!r}")
    tokenizer_dir = Path(tokenizer_dir)
    missing = [n for n in TOKENIZER_FILES if not (tokenizer_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{tokenizer_dir}: missing tokenizer files {missing}; expected {list(TOKENIZER_FILES)}")
    out = check_export_target(out_dir, "hf", tokenizer_dir)
    from ..data.tokenizer import MiniTokenizer

    tok = MiniTokenizer.load(tokenizer_dir)  # special-token ids by name for an imported tokenizer
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    stops = [tok.eos_id] + ([tok.im_end_id] if tok.im_end_id is not None else [])
    with atomic_folder(out) as tmp:
        write_export_marker(tmp, "hf", tokenizer_dir)
        save_file(hf_state_dict(model, getattr(torch, dtype)), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(model, dtype, ids), indent=2), encoding="utf-8")
        (tmp / "generation_config.json").write_text(
            json.dumps(_generation_config(stops, tok.bos_id, tok.pad_id), indent=2), encoding="utf-8")
        for name in TOKENIZER_FILES:
            shutil.copy2(tokenizer_dir / name, tmp / name)
        if tok.imported is None:  # an imported tokenizer's template stays as it came
            harden_hf_folder(tmp)  # the escaping chat template, also for tokenizers saved before it existed
        # The model cannot read past its context: tell the tokenizer so, keep its chat template.
        tc_path = tmp / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text(encoding="utf-8"))
        tc["model_max_length"] = model.config.max_seq_len
        if "chat_template" not in tc and tok.imported is None:
            raise ValueError(f"{tokenizer_dir / 'tokenizer_config.json'}: no chat_template; expected minigpt's ChatML template")
        tc_path.write_text(json.dumps(tc, ensure_ascii=False, indent=2), encoding="utf-8")
    logger.info("exported %s parameters to %s", f"{model.num_params():,}", out)
    return out


def export_hf(checkpoint_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Export a minigpt checkpoint folder to `out_dir` (config.json, model.safetensors, tokenizer files)."""
    from ..train.checkpoint import load_checkpoint

    model, _tok, _cfg = load_checkpoint(checkpoint_dir)  # verifies the manifest and the tokenizer hash
    return export_model(model, checkpoint_dir, out_dir, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.infer.export", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="minigpt checkpoint folder, e.g. runs/demo/sft/final_model")
    ap.add_argument("out_dir", help="folder to write the transformers model (or the GGUF file and Modelfile) to")
    ap.add_argument("--format", default="hf", choices=["hf", "gguf"],
                    help="hf: a transformers Llama folder; gguf: a GGUF file for llama.cpp plus an Ollama Modelfile")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="for --format hf")
    ap.add_argument("--outtype", default="f32", choices=["f32", "f16", "q8_0"], help="for --format gguf")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.format == "gguf":
            from .gguf import export_gguf

            out = export_gguf(args.checkpoint, args.out_dir, outtype=args.outtype)
        else:
            out = export_hf(args.checkpoint, args.out_dir, dtype=args.dtype)
    except ImportError as e:
        print(f"error: {e.name} is missing: install the serve extra (pip install -e '.[serve]')", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
