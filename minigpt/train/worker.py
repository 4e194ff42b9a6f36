"""The worker `launch()` hands to torchrun: one process per rank, the same Trainer wrapped in DDP.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m minigpt.train.worker --params P.json

Rank r reads its own share of each global batch (WindowSampler / ChatBatches rank, world_size); rank 0
alone logs, plots and saves. Backend: nccl on CUDA, gloo on CPU. SIGTERM / SIGINT (what launch() sends
on interrupt) make every rank stop at the same step; rank 0 saves a checkpoint there; exit code 0.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .launch import RESULT_PREFIX



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", required=True, help="JSON file of resolved notebook parameters (written by launch())")
    ap.add_argument("--section", default="pretrain", choices=["pretrain", "sft"])
    args = ap.parse_args(argv)

    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(message)s" if world_size > 1 else "%(message)s", stream=sys.stdout)

    import torch
    import torch.distributed as dist

    from ..params import Params, coerce, registry

    raw = json.loads(Path(args.params).read_text(encoding="utf-8"))
    reg = registry(args.section)
    P = Params({k: (coerce(k, v, reg[k][0], args.params) if k in reg and v is not None else v) for k, v in raw.items()})
    P["run_dir"] = Path(P["run_dir"])
    P["progress_bar"] = False  # a \r-redrawn bar garbles a streamed log; rank 0 prints metrics lines instead
    logging.getLogger("minigpt").setLevel(logging.INFO if rank == 0 else logging.WARNING)

    use_cuda = torch.cuda.is_available() and str(P.get("device", "auto")) in ("auto", "cuda") or str(P.get("device")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        P["device"] = f"cuda:{local_rank}"
    elif P.get("device") in (None, "auto"):
        P["device"] = "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if world_size > 1:
        dist.init_process_group(backend=backend)
    try:
        if args.section == "pretrain":
            from .pretrain import build_pretrain_trainer

            trainer = build_pretrain_trainer(P, rank=rank, world_size=world_size)
        else:
            from .sft import build_sft_trainer

            trainer, _info = build_sft_trainer(P, rank=rank, world_size=world_size)
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            trainer.model = DDP(trainer.model, device_ids=[local_rank] if use_cuda else None)
            if rank == 0:
                logging.getLogger(__name__).info("DDP: %d processes, backend %s", world_size, backend)
        result = trainer.fit()
        if rank == 0:
            sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")  # the line launch() parses
            sys.stdout.flush()
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
