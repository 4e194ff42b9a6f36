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

logger = logging.getLogger(__name__)

_EOS_ID, _IM_END_ID, _PAD_ID = 0, 2, 3

# Written into every export folder: only a folder holding it (of the same format) may be replaced.
EXPORT_MARKER = "minigpt_export.json"
# A run folder's parts (runs/<name>/...): an export never goes into or over one of these.
RUN_PARTS = ("data", "tokenizer", "tokens", "pretrain", "sft", "align", "eval", "rl")


def _is_checkpoint(folder: Path) -> bool:
    """A minigpt checkpoint: trainer_state.json, a manifest, or a config.json with a "model" section."""
    if (folder / "trainer_state.json").is_file() or (folder / "manifest.json").is_file():
        return True
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        return isinstance(json.loads(cfg.read_text(encoding="utf-8")).get("model"), dict)
    except (ValueError, OSError, AttributeError):
        return False


def _is_run(folder: Path) -> bool:
    return any((folder / part).is_dir() for part in RUN_PARTS)


def _marker_format(folder: Path) -> str | None:
    """The format named by `folder`'s export marker, None when it has none (or an unreadable one).

    A folder holding nothing but an export's files counts too: an HF export written before the marker existed,
    and a GGUF export (GGUF files and a Modelfile, no marker: Ollama's folder stays as Ollama expects it)."""
    try:
        marker = json.loads((folder / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        names = {p.name for p in folder.iterdir()}
        hf = {"config.json", "model.safetensors", "generation_config.json", *TOKENIZER_FILES}
        if "model.safetensors" in names and names <= hf:
            return "hf"
        if names and all(n == "Modelfile" or (n.startswith("minigpt-") and n.endswith(".gguf")) for n in names) \
                and any(n.endswith(".gguf") for n in names):
            return "gguf"
        return None
    return marker.get("format") if isinstance(marker, dict) else None


def check_export_target(out_dir: str | Path, fmt: str, checkpoint_dir: str | Path | None = None) -> Path:
    """Refuse an export folder whose replacement would destroy something that is not an export.

    Refused, with ValueError naming the folder: a checkpoint, or a folder inside one; a run folder, or a
    folder inside one of its parts (data/, pretrain/, ...; a new folder such as runs/X/hf is fine); a folder
    that holds the checkpoint being exported; a file; a non-empty folder that is not an export of this format
    (`minigpt_export.json`, or only an export's files). An empty folder or a previous export of the same format
    may be replaced."""
    out = Path(out_dir)
    target = out.resolve()
    for folder in [target, *target.parents]:
        if folder.is_dir() and _is_checkpoint(folder):
            where = "is" if folder == target else f"is inside {folder}, which is"
            raise ValueError(f"{out}: {where} a minigpt checkpoint; exporting there would replace it. "
                             "Expected a separate output folder, e.g. runs/NAME/hf")
    if target.is_dir() and _is_run(target):
        raise ValueError(f"{out}: is a run folder (it has {', '.join(p for p in RUN_PARTS if (target / p).is_dir())}/); "
                         "exporting there would replace the whole run. Expected a new folder, e.g. runs/NAME/hf")
    for folder in target.parents:
        if _is_run(folder):
            part = target.relative_to(folder).parts[0]
            if part in RUN_PARTS:
                where = "is" if target == folder / part else "is inside"
                raise ValueError(f"{out}: {where} {folder / part}, a part of the run {folder}; "
                                 f"expected a folder of its own, e.g. {folder / fmt}")
            break
    if checkpoint_dir is not None:
        ck = Path(checkpoint_dir).resolve()
        if target == ck or ck.is_relative_to(target):
            raise ValueError(f"{out}: holds the checkpoint being exported ({checkpoint_dir}); "
                             "expected a separate output folder, e.g. runs/NAME/hf")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; expected a folder to write the {fmt} export to")
    if target.is_dir() and any(target.iterdir()):
        found = _marker_format(target)
        if found != fmt:
            what = (f"a {found} export" if found else
                    f"not an export (no {EXPORT_MARKER}; it holds {', '.join(sorted(p.name for p in target.iterdir())[:5])})")
            raise ValueError(f"{out}: not empty and {what}; an export replaces its folder, so it only writes into "
                             f"an empty folder or a previous {fmt} export. Choose another folder or empty this one")
    return out


def write_export_marker(folder: Path, fmt: str, checkpoint_dir: str | Path | None) -> None:
    """The marker that lets a later export of the same format replace `folder`."""
    (folder / EXPORT_MARKER).write_text(json.dumps(
        {"format": fmt, "source": None if checkpoint_dir is None else str(checkpoint_dir)}, indent=2), encoding="utf-8")


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
