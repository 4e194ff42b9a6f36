"""Import a pretrained Hugging Face model folder as a minigpt checkpoint.

    python -m minigpt.convert ~/models/Qwen2.5-0.5B-Instruct runs/qwen/import

The folder is what `huggingface-cli download` writes: config.json, *.safetensors (one file or shards with
model.safetensors.index.json), tokenizer.json and tokenizer_config.json (with the chat template, or a
chat_template.jinja beside it). Nothing is downloaded. The result is an ordinary minigpt checkpoint folder
(model.safetensors in float32, config.json, the tokenizer files, manifest.json) that notebooks 03-07,
the server and the exports read as they are.

Supported (`model_type` in config.json):
- llama (LlamaForCausalLM): GQA, tied or untied head, head_dim other than hidden_size / num_attention_heads;
- qwen2 (Qwen2ForCausalLM): q/k/v biases -> ModelConfig.attention_bias;
- qwen3 (Qwen3ForCausalLM): per-head q/k RMSNorm -> qk_norm, explicit head_dim;
- minimind (MiniMindForCausalLM, dense): its config.json field names are the Qwen3/Llama ones one to one
  (hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size,
  rms_norm_eps, rope_theta, max_position_embeddings, tie_word_embeddings); q/k norms are taken from the
  weights (MiniMind-3 has them, the earlier MiniMind2 has not).
Refused, naming the field: MoE (use_moe, num_experts, *_moe model types), sliding-window attention
(use_sliding_window true), attention_bias or mlp_bias in Llama, rope_scaling of any kind (minimind's
inference_rope_scaling too), an activation other than silu, an unknown model_type, a folder without
tokenizer.json or without safetensors weights (pytorch_model.bin is a pickle and is never loaded).

Memory: the model is built once (float32) and each tensor is read from its shard and copied into its
parameter, one at a time (the shard file is memory-mapped while it is read); the weights are then written
tensor by tensor from the parameters' memory. So at most two copies of the weights are held: the model and
the mapped source file (see docs/pretrained.md for measured peaks).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig

logger = logging.getLogger(__name__)

SUPPORTED = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
             "minimind": "MiniMindForCausalLM"}
SUPPORTED_TEXT = ("LlamaForCausalLM (model_type llama), Qwen2ForCausalLM (qwen2), Qwen3ForCausalLM (qwen3) "
                  "and dense MiniMindForCausalLM (minimind)")
# defaults of the config classes, for fields a config.json may leave out
_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 2048},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 32768},
    "qwen3": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 32768,
              "head_dim": 128},
    "minimind": {"rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": True, "max_position_embeddings": 32768,
                 "num_attention_heads": 8, "num_key_value_heads": 4},
}


class ImportRefused(ValueError):
    """The folder holds a model minigpt does not compute (the message names the field and what is supported)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _rope_scaling_type(rs: Any) -> str | None:
    if rs in (None, {}):
        return None
    if isinstance(rs, dict):
        kind = rs.get("rope_type", rs.get("type"))
        return None if kind == "default" else str(kind)
    return repr(rs)


def refuse_unsupported(hf: dict, where: str) -> str:
    """The model_type of a transformers config.json that minigpt can compute, or ImportRefused naming the field and
    what is supported: MoE, sliding windows, biases other than Qwen2's q/k/v, rope scaling, other activations."""
    mt = hf.get("model_type")
    if not isinstance(mt, str):
        raise ImportRefused(f"{where}: no model_type; expected one of {SUPPORTED_TEXT}")
    if "moe" in mt or mt in ("mixtral", "deepseek_v2", "deepseek_v3", "dbrx", "jamba"):
        raise ImportRefused(f"{where}: model_type {mt!r} is a mixture-of-experts model; MoE is not supported "
                            f"(supported: {SUPPORTED_TEXT})")
    if mt not in SUPPORTED:
        raise ImportRefused(f"{where}: model_type {mt!r} ({', '.join(hf.get('architectures') or ['no architectures'])}) "
                            f"is not supported; supported: {SUPPORTED_TEXT}")
    arch = (hf.get("architectures") or [SUPPORTED[mt]])[0]
    if arch != SUPPORTED[mt]:
        raise ImportRefused(f"{where}: architectures {arch!r} for model_type {mt!r}; expected {SUPPORTED[mt]}")
    for key in ("use_moe", "num_experts", "num_local_experts", "n_routed_experts"):
        if hf.get(key) and not (mt == "minimind" and key != "use_moe"):  # minimind always lists its MoE defaults
            raise ImportRefused(f"{where}: {key}={hf[key]!r}: {arch} with mixture-of-experts layers is not supported "
                                "(only dense models)")
    if hf.get("use_sliding_window"):
        raise ImportRefused(f"{where}: use_sliding_window=true: {arch} with sliding-window attention is not supported "
                            "(minigpt attends to the whole context)")
    if mt == "llama" and hf.get("attention_bias"):
        raise ImportRefused(f"{where}: attention_bias=true in {arch} (biases on q/k/v and o) is not supported; "
                            "q/k/v biases are supported as Qwen2ForCausalLM")
    if mt == "qwen3" and hf.get("attention_bias"):
        raise ImportRefused(f"{where}: attention_bias=true in {arch} (biases on q/k/v and o) is not supported")
    if hf.get("mlp_bias"):
        raise ImportRefused(f"{where}: mlp_bias=true in {arch} is not supported (minigpt's MLP has no biases)")
    kind = _rope_scaling_type(hf.get("rope_scaling"))
    if kind is None and isinstance(hf.get("rope_parameters"), dict):
        kind = _rope_scaling_type(hf["rope_parameters"])
    if kind is not None or hf.get("inference_rope_scaling"):
        field = "inference_rope_scaling" if hf.get("inference_rope_scaling") else "rope_scaling"
        raise ImportRefused(f"{where}: {field} ({kind or 'yarn'}) is not supported; minigpt computes plain RoPE "
                            "(rope_scaling null); remove it to use the model within its original context")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ImportRefused(f"{where}: hidden_act={act!r}: minigpt's MLP is SwiGLU with silu")
    return mt


def model_config_from_hf(hf: dict, where: str, weight_shapes: dict[str, tuple[int, ...]] | None = None,
                         max_seq_len: int | None = None) -> tuple[ModelConfig, str]:
    """(ModelConfig, model_type) for a transformers config.json, or ImportRefused naming what is not supported.
    weight_shapes (name -> shape of the safetensors files) settles what a MiniMind config may leave implicit."""
    mt = refuse_unsupported(hf, where)
    d = {**_DEFAULTS[mt], **{k: v for k, v in hf.items() if v is not None}}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(d.get(key), int):
            raise ValueError(f"{where}: {key}: expected an integer, got {d.get(key)!r}")
    heads = d["num_attention_heads"]
    inter = d.get("intermediate_size")
    shapes = weight_shapes or {}
    if inter is None and mt == "minimind":  # MiniMind2 saved null and derived it in code: read it from the weights
        gate = shapes.get("model.layers.0.mlp.gate_proj.weight")
        inter = gate[0] if gate else 64 * math.ceil(d["hidden_size"] * math.pi / 64)
    if not isinstance(inter, int):
        raise ValueError(f"{where}: intermediate_size: expected an integer, got {inter!r}")
    qk_norm = mt == "qwen3"
    if mt == "minimind":
        qk_norm = any(n.endswith("self_attn.q_norm.weight") for n in shapes)
    # transformers >= 5 writes rope_theta inside rope_parameters; 4.x (and MiniMind) at the top level
    rope = hf.get("rope_theta")
    if rope is None and isinstance(hf.get("rope_parameters"), dict):
        rope = hf["rope_parameters"].get("rope_theta")
    if rope is None:
        rope = _DEFAULTS[mt]["rope_theta"]
    ctx = int(d["max_position_embeddings"])
    try:
        cfg = ModelConfig(
            vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=heads,
            n_kv_heads=d.get("num_key_value_heads") or heads, d_ff=inter,
            max_seq_len=min(ctx, max_seq_len) if max_seq_len else ctx, rope_theta=float(rope),
            rms_norm_eps=float(d["rms_norm_eps"]), dropout=0.0, tie_word_embeddings=bool(d["tie_word_embeddings"]),
            qk_norm=qk_norm, mlp="swiglu", attention_bias=mt == "qwen2",
            head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    return cfg, mt


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        wm = _read_json(index).get("weight_map")
        if not isinstance(wm, dict):
            raise ValueError(f"{index}: expected a \"weight_map\" object")
        files = [folder / f for f in sorted(set(wm.values()))]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        raise FileNotFoundError(f"{folder}: no *.safetensors weights" + (
            f" ({', '.join(pickled[:2])} is a pickle, which minigpt never loads: save the model with "
            "transformers' save_pretrained(safe_serialization=True))" if pickled else ""))
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: listed in model.safetensors.index.json but missing")
    return files


def _weight_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor, from the safetensors headers (no data read)."""
    from safetensors import safe_open

    names: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                names.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
        except Exception as e:  # the Rust reader raises its own error type for a bad header
            raise ValueError(f"{f}: not a readable safetensors file ({e})") from None
    return names


def _minigpt_name(hf_name: str) -> str | None:
    """HF Llama-family name -> minigpt parameter name (None: a buffer transformers may have saved)."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    return hf_name[len("model."):] if hf_name.startswith("model.") else hf_name


def load_hf_weights(model: torch.nn.Module, files: list[Path]) -> None:
    """Copy every tensor of the safetensors files into `model`'s parameters, one tensor at a time
    (each converted to the parameter's dtype in the copy); every parameter must be filled exactly once."""
    from safetensors import safe_open

    params = dict(model.named_parameters())  # a tied head appears once, as embed_tokens.weight
    tied = model.config.tie_word_embeddings
    filled: set[str] = set()
    for f in files:
        _weight_shapes([f])  # a readable header, or an error naming the file
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                target = _minigpt_name(name)
                if target is None or (tied and target == "lm_head.weight"):
                    continue  # a tied head saved anyway is the embedding again
                p = params.get(target)
                if p is None:
                    raise ValueError(f"{f}: tensor {name} has no place in the model (expected Llama/Qwen names "
                                     f"such as model.layers.0.self_attn.q_proj.weight)")
                t = h.get_tensor(name)
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"{f}: tensor {name} has shape {tuple(t.shape)}, the config gives {tuple(p.shape)}")
                with torch.no_grad():
                    p.copy_(t)
                del t
                filled.add(target)
    missing = sorted(set(params) - filled)
    if missing:
        raise ValueError(f"{files[0].parent}: no weights for {missing[:4]}{' ...' if len(missing) > 4 else ''}")


_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file written tensor by tensor from the tensors' own memory: an 8-byte little-endian header
    length, the JSON header (dtype, shape, data_offsets per tensor, padded to 8 bytes), then the raw data.
    safetensors' own save first copies every tensor to bytes (one more copy of all the weights); this does not."""
    names = sorted(state)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        t = state[name]
        if t.dtype not in _ST_DTYPES or t.device.type != "cpu":
            raise ValueError(f"{name}: cannot stream a {t.dtype} tensor on {t.device}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for name in names:
            t = state[name].detach().contiguous()  # contiguous already for parameters: no copy
            f.write(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
        f.flush()
        os.fsync(f.fileno())


def _chat_template(folder: Path, conf: dict) -> str | None:
    tpl = conf.get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        tpl = next((t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None)
    jinja = folder / "chat_template.jinja"
    if not tpl and jinja.is_file():
        tpl = jinja.read_text(encoding="utf-8")
    return tpl if isinstance(tpl, str) and tpl else None


def _require_tokenizer(folder: Path) -> Path:
    tj = folder / "tokenizer.json"
    if not tj.is_file():
        raise ImportRefused(f"{tj}: not found; minigpt reads the fast tokenizer file tokenizer.json (a folder with "
                            "only tokenizer.model or vocab.json/merges.txt: load it with transformers' AutoTokenizer "
                            "and save_pretrained it once to write tokenizer.json)")
    return tj


def prepare_tokenizer(folder: Path, out: Path, architecture: str) -> None:
    """The folder's tokenizer files as they are, its tokenizer_config.json plus the import marker, the
    normalisation record (0: the tokenizer was trained on raw text, prompts are not normalised) and the
    chat template (moved in from chat_template.jinja where the folder keeps it there)."""
    from .data.normalize import VERSION_KEY
    from .data.tokenizer.imported import IMPORT_KEY

    tj = _require_tokenizer(folder)
    tc = folder / "tokenizer_config.json"
    conf = _read_json(tc) if tc.is_file() else {}
    if not isinstance(conf, dict):
        raise ValueError(f"{tc}: expected a JSON object")
    conf = {**conf, "chat_template": _chat_template(folder, conf),
            IMPORT_KEY: {"architecture": architecture, "source": str(folder)}, VERSION_KEY: 0}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tj, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps(conf, ensure_ascii=False, indent=2), encoding="utf-8")
    stm = folder / "special_tokens_map.json"
    if stm.is_file():
        shutil.copyfile(stm, out / "special_tokens_map.json")
    else:  # the exports copy all three files
        keys = ("bos_token", "eos_token", "pad_token", "unk_token")
        (out / "special_tokens_map.json").write_text(
            json.dumps({k: conf[k] for k in keys if conf.get(k)}, ensure_ascii=False, indent=2), encoding="utf-8")


def source_fingerprint(folder: Path) -> str:
    """SHA-256 over config.json and the names and sizes of the weight files (a cheap re-import check)."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in _weight_files(folder):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def import_hf(folder: str | Path, out: str | Path, max_seq_len: int | None = None) -> Path:
    """Import the Hugging Face model `folder` as a minigpt checkpoint folder `out` (written atomically)."""
    from .data.tokenizer import MiniTokenizer
    from .model.gpt import GPT
    from .atomic import atomic_folder
    from .train.checkpoint import FORMAT_VERSION, TOKENIZER_FILES, model_state_live, write_manifest

    folder, out = Path(folder), Path(out)
    cfile = folder / "config.json"
    if not cfile.is_file():
        raise FileNotFoundError(f"{cfile}: not found; expected a Hugging Face model folder "
                                "(config.json, *.safetensors, tokenizer.json)")
    hf = _read_json(cfile)
    if not isinstance(hf, dict):
        raise ValueError(f"{cfile}: expected a JSON object")
    _require_tokenizer(folder)  # before reading any weights
    cfg, mt = model_config_from_hf(hf, str(cfile), None, max_seq_len)  # refusals before any weight is looked at
    files = _weight_files(folder)
    if mt == "minimind":  # q/k norms or not, and an implicit intermediate_size: read from the weights' headers
        cfg, mt = model_config_from_hf(hf, str(cfile), _weight_shapes(files), max_seq_len)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".minigpt-import-") as tmp:
        tok_dir = Path(tmp)
        prepare_tokenizer(folder, tok_dir, SUPPORTED[mt])
        tokenizer = MiniTokenizer.load(tok_dir)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"{folder / 'tokenizer.json'}: {tokenizer.vocab_size} tokens, but the model's vocab_size "
                             f"is {cfg.vocab_size}")
        model = GPT(cfg)
        load_hf_weights(model, files)
        model.eval()
        meta = {"format_version": FORMAT_VERSION, "kind": "import", "model": cfg.to_dict(), "step": 0, "tokens_seen": 0,
                "tokenizer_sha256": tokenizer.sha256,
                "imported_from": {"folder": str(folder.resolve()), "architecture": SUPPORTED[mt], "model_type": mt,
                                  "source_sha256": source_fingerprint(folder),
                                  "torch_dtype": hf.get("torch_dtype") or hf.get("dtype")}}
        with atomic_folder(out) as folder_tmp:  # the checkpoint layout of train/checkpoint.py, weights streamed
            write_safetensors(model_state_live(model), folder_tmp / "model.safetensors")
            (folder_tmp / "config.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
            for name in TOKENIZER_FILES:
                if (tok_dir / name).is_file():
                    shutil.copyfile(tok_dir / name, folder_tmp / name)
            write_manifest(folder_tmp)
    logger.info("imported %s (%s, %s parameters) into %s in %.1fs", folder, SUPPORTED[mt], f"{model.num_params():,}",
                out, time.perf_counter() - t0)
    return out


def is_hf_folder(folder: Path) -> bool:
    """A transformers model folder (config.json with model_type), not a minigpt checkpoint."""
    cfile = folder / "config.json"
    if not cfile.is_file() or (folder / "manifest.json").is_file():
        return False
    try:
        conf = json.loads(cfile.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return isinstance(conf, dict) and "model_type" in conf and "model" not in conf


def resolve_init_from(path: str | Path, import_dir: str | Path) -> Path:
    """The minigpt checkpoint to start from: `path` itself when it is one, else `path` (an HF folder) imported
    into `import_dir`/<folder name> (kept and reused while the source's config and weight files are unchanged)."""
    from .train.checkpoint import read_config, verify_checkpoint

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"init_from: {path} not found; expected a minigpt checkpoint folder or a downloaded "
                                "Hugging Face model folder")
    if not is_hf_folder(path):
        return path  # load_checkpoint checks it and names what is wrong
    out = Path(import_dir) / path.resolve().name
    if out.is_dir():
        try:
            verify_checkpoint(out)
            prev = read_config(out).get("imported_from") or {}
            if prev.get("source_sha256") == source_fingerprint(path):
                logger.info("init_from: reusing %s (imported from %s)", out, path)
                return out
        except (OSError, ValueError) as e:
            logger.warning("init_from: re-importing %s (%s)", path, e)
    return import_hf(path, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.convert", description=__doc__.split("\n")[0])
    ap.add_argument("hf_folder", help="a downloaded Hugging Face model folder (config.json, *.safetensors, tokenizer.json)")
    ap.add_argument("out", help="the minigpt checkpoint folder to write, e.g. runs/qwen/import")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="cap the context (default: the model's max_position_embeddings)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = import_hf(args.hf_folder, args.out, max_seq_len=args.max_seq_len)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"imported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
