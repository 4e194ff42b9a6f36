"""Export a minigpt checkpoint as a GGUF file for llama.cpp and Ollama (the `gguf` package of the serve extra).

The file uses llama.cpp's "llama" architecture; minigpt's decoder is that architecture (RMSNorm,
rotary positions, grouped-query attention, SwiGLU), so the export is a rename plus one reorder. A model
with `qk_norm` uses llama.cpp's "qwen3" architecture instead (the same decoder plus per-head RMSNorms
blk.N.attn_q_norm/attn_k_norm on q and k before RoPE, and RoPE in the rotate-half layout, so no reorder), and
one with `attention_bias` (an imported Qwen2) llama.cpp's "qwen2" (blk.N.attn_q/k/v.bias; rotate-half, no reorder).
key_length / value_length carry head_dim, which an imported model may set apart from d_model / n_heads:

- Tensor names follow llama.cpp's llama layout: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v,
  attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm, and output when the head is untied
  (llama.cpp reuses token_embd for a missing output tensor).
- q and k rows are permuted. minigpt (like Hugging Face Llama) rotates the pairs (i, i + D/2) of each
  head ("rotate half"); llama.cpp's llama architecture rotates adjacent pairs (2i, 2i + 1), the layout of
  Meta's original weights. Row i of a head goes to 2i and row i + D/2 to 2i + 1, in q and k alike, so
  every pair keeps its frequency and q.k is unchanged; v and o are untouched. llama.cpp's own
  Hugging Face converter applies the same reorder to Llama q/k weights.
- The tokenizer is written as tokenizer.ggml.model "gpt2" (byte-level BPE: the tokens in their
  byte-to-unicode form, the merges, token types: the 4 special tokens CONTROL, padding up to the
  model's vocab_size UNUSED) with tokenizer.ggml.pre "gpt-2". minigpt's pre-tokenizer is
  `ByteLevel(add_prefix_space=False)` whose split is GPT-2's regex
  `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`, and "gpt-2" is the
  name under which llama.cpp splits with exactly that regex (no "unrecognised pre-tokenizer" error,
  and no fallback to a different split). BOS/EOS are <|endoftext|> (0), EOT <|im_end|> (2), padding
  <|pad|> (3); no BOS is added (minigpt's prompts start without one).
- tokenizer.chat_template is the tokenizer's ChatML template.

outtype: "f32" (exact), "f16" (2-D weights in float16), "q8_0" (2-D weights in llama.cpp's Q8_0: blocks
of 32 int8 with one float16 scale; a weight whose rows are not a multiple of 32 stays float16). Norm
weights stay float32 in every type.

Beside the .gguf an Ollama `Modelfile` carries the same ChatML template and the stop tokens.

    python -m minigpt.export runs/default/sft/final_model runs/default/gguf --format gguf --outtype q8_0
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.gpt import GPT
from ..train.checkpoint import atomic_folder
from .export_target import check_export_target

logger = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "q8_0")
TOKENIZER_PRE = "gpt-2"
_EOS_ID, _IM_END_ID, _PAD_ID = 0, 2, 3
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    # attention_bias (qwen2 architecture)
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias"}
# An imported tokenizer's pre-tokenizer as llama.cpp names it: GPT-2's regex inside ByteLevel (minigpt's own and
# MiniMind's), or Qwen2's split regex before a regex-free ByteLevel. Any other is refused by name.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")


def interleave_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k weight rows from rotate-half pairs (i, i + D/2) to adjacent pairs (2i, 2i + 1), per head."""
    out_dim = w.shape[0]
    half = out_dim // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_architecture(cfg: Any) -> str:
    """llama.cpp's architecture for this config: "qwen3" with q/k norms, "qwen2" with q/k/v biases (imported
    Qwen2 models; its RoPE is rotate-half too), else "llama"."""
    if getattr(cfg, "attention_bias", False):
        return "qwen2"
    return "qwen3" if cfg.qk_norm else "llama"


def check_gguf_variant(cfg: Any) -> None:
    """Raise ValueError for a variant no llama.cpp architecture computes as minigpt does (untied heads and
    q/k norms it does)."""
    if cfg.mlp != "swiglu":
        raise ValueError(f"mlp={cfg.mlp!r}: llama.cpp's llama and qwen3 architectures have only the SwiGLU MLP; "
                         "train with mlp='swiglu' to export a GGUF")
    if getattr(cfg, "attention_bias", False) and cfg.qk_norm:
        raise ValueError("attention_bias with qk_norm: no llama.cpp architecture has q/k/v biases and q/k norms "
                         "(qwen2 has the biases, qwen3 the norms); no GGUF can be written")


def gguf_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """minigpt's weights under llama.cpp's tensor names (float32; for the llama architecture q/k rows are
    reordered for its RoPE, qwen3's RoPE is minigpt's own)."""
    cfg = model.config
    check_gguf_variant(cfg)
    arch = gguf_architecture(cfg)
    reorder = arch == "llama"
    out: dict[str, torch.Tensor] = {}
    for name, t in getattr(model, "_orig_mod", model).state_dict().items():
        t = t.detach().to("cpu", torch.float32)
        if name == "embed_tokens.weight":
            out["token_embd.weight"] = t
        elif name == "norm.weight":
            out["output_norm.weight"] = t
        elif name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                out["output.weight"] = t
        elif name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            if rest not in _LAYER_NAMES:
                raise ValueError(f"parameter {name}: llama.cpp's {arch} architecture has no tensor for it")
            if reorder and rest.endswith("q_proj.weight"):
                t = interleave_rope_rows(t, cfg.n_heads)
            elif reorder and rest.endswith("k_proj.weight"):
                t = interleave_rope_rows(t, cfg.n_kv_heads)
            out[f"blk.{i}.{_LAYER_NAMES[rest]}"] = t
        elif not name.startswith("rope_"):
            raise ValueError(f"parameter {name}: llama.cpp's {arch} architecture has no tensor for it")
    return {k: v.contiguous() for k, v in out.items()}


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for tokenizer.ggml.*: ids beyond the tokenizer's are [PADn], UNUSED."""
    import gguf

    spec = json.loads(tokenizer.to_json())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"tokenizer model {spec['model']['type']!r}: expected byte-level BPE")
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    by_id.update({a["id"]: a["content"] for a in spec.get("added_tokens", [])})
    special = set(getattr(tokenizer, "special_ids", ()))
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, [int(t) for t in types], merges


def _encode(t: torch.Tensor, outtype: str) -> tuple[np.ndarray, Any]:
    """The tensor's data in the output type and its GGML type (1-D tensors stay float32)."""
    import gguf

    a = t.numpy()
    if a.ndim == 1 or outtype == "f32":
        return a.astype(np.float32), gguf.GGMLQuantizationType.F32
    if outtype == "q8_0" and a.shape[-1] % 32 == 0:
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return a.astype(np.float16), gguf.GGMLQuantizationType.F16


def _metadata(w: Any, model: GPT, outtype: str, name: str) -> None:
    import gguf

    c = model.config
    w.add_name(name)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.d_ff)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(float(c.rope_theta))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(c.vocab_size)


def tokenizer_pre(tokenizer: Any) -> str:
    """llama.cpp's tokenizer.ggml.pre for this tokenizer (ValueError naming an imported one it cannot split alike)."""
    if getattr(tokenizer, "imported", None) is None:
        return TOKENIZER_PRE
    pre = json.loads(tokenizer.to_json()).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return TOKENIZER_PRE
    parts = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Split"
            and parts[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT and parts[1].get("type") == "ByteLevel"):
        return "qwen2"
    raise ValueError(f"{tokenizer.source}: pre-tokenizer {json.dumps(pre)[:120]}... is not one this GGUF export maps to "
                     "llama.cpp (supported: GPT-2's ByteLevel, Qwen2's split); convert that model with llama.cpp's "
                     "convert_hf_to_gguf.py instead")


def _tokenizer_metadata(w: Any, tokenizer: Any, vocab_size: int, chat_template: str) -> None:
    pre = tokenizer_pre(tokenizer)
    tokens, types, merges = vocabulary(tokenizer, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(getattr(tokenizer, "bos_id", _EOS_ID))
    w.add_eos_token_id(getattr(tokenizer, "eos_id", _EOS_ID))
    eot = getattr(tokenizer, "im_end_id", _IM_END_ID)
    if eot is not None:  # an imported tokenizer without ChatML has none
        w.add_eot_token_id(eot)
    w.add_pad_token_id(getattr(tokenizer, "pad_id", _PAD_ID))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(chat_template)


def write_gguf(model: GPT, tokenizer: Any, path: str | Path, outtype: str = "f32", chat_template: str | None = None,
               name: str = "minigpt") -> Path:
    """Write `model` and `tokenizer` as one GGUF file at `path` (through a temporary name, then renamed)."""
    import gguf

    from ..data.tokenizer.special import CHAT_TEMPLATE

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype: expected one of {', '.join(OUTTYPES)}, got {outtype!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    check_gguf_variant(model.config)
    tokenizer_pre(tokenizer)  # refusals before any file is opened
    # gguf logs its own INFO lines (the byte order, "Writing the following files" with the temporary file's path):
    # export_gguf says what was written instead
    gguf_log = logging.getLogger("gguf")
    level = gguf_log.level
    gguf_log.setLevel(logging.WARNING)
    try:
        w = gguf.GGUFWriter(str(tmp), arch=gguf_architecture(model.config))
    except BaseException:
        gguf_log.setLevel(level)
        raise
    try:
        _metadata(w, model, outtype, name)
        _tokenizer_metadata(w, tokenizer, model.config.vocab_size, chat_template or CHAT_TEMPLATE)
        for tname, t in gguf_tensors(model).items():
            data, qtype = _encode(t, outtype)
            w.add_tensor(tname, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
        gguf_log.setLevel(level)
    os.replace(tmp, path)
    return path


def modelfile(gguf_name: str, context: int) -> str:
    """An Ollama Modelfile for the GGUF beside it: ChatML, stop at <|im_end|> and <|endoftext|>."""
    return (f"FROM ./{gguf_name}\n\n"
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
            '{{ end }}<|im_start|>assistant\n"""\n\n'
            'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n'
            f"PARAMETER num_ctx {context}\n")


def export_gguf(checkpoint_dir: str | Path, out_dir: str | Path, outtype: str = "f32") -> Path:
    """`out_dir`/minigpt-OUTTYPE.gguf plus an Ollama Modelfile, written as one folder (atomically)."""
    from ..train.checkpoint import load_checkpoint

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype: expected one of {', '.join(OUTTYPES)}, got {outtype!r}")
    model, tokenizer, _ = load_checkpoint(checkpoint_dir)  # verifies the manifest and the tokenizer hash
    template = _chat_template(Path(checkpoint_dir))
    name = f"minigpt-{outtype}.gguf"
    # Never replaces a run, a checkpoint or a user's folder. A GGUF folder is recognised by its files (GGUF files
    # and a Modelfile only), so it carries no marker file beside what Ollama reads.
    check_export_target(out_dir, "gguf", checkpoint_dir)
    with atomic_folder(Path(out_dir)) as tmp:
        write_gguf(model, tokenizer, tmp / name, outtype, template, name=Path(checkpoint_dir).name)
        (tmp / "Modelfile").write_text(modelfile(name, model.config.max_seq_len), encoding="utf-8")
    logger.info("wrote %s and an Ollama Modelfile to %s", name, out_dir)
    return Path(out_dir) / name


def _chat_template(folder: Path) -> str | None:
    """The chat template of the checkpoint's tokenizer_config.json, if it has one."""
    f = folder / "tokenizer_config.json"
    if not f.is_file():
        return None
    return json.loads(f.read_text(encoding="utf-8")).get("chat_template")
