"""torchrun entry for data-parallel training of a zoo model: `torchrun --nproc_per_node=N -m fxscale.ddp ...`.

Every rank builds the same seeded model, trains it with fxscale.train.train_ddp (gloo on CPU, NCCL on CUDA) and
hashes its trained weights; rank 0 gathers every rank's hash and writes one JSON result (history, test accuracy,
per-rank weight hashes and whether they agree) atomically to --out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict
from typing import Any, Optional, Sequence

import torch
from torch import nn

from fxscale.errors import FxscaleError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def weights_digest(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _init_group(device: str, backend: Optional[str]) -> torch.device:
    """Bind this rank's device and start the process group from the torchrun environment."""
    import torch.distributed as dist

    from fxscale.train import resolve_device

    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise FxscaleError(f"fxscale.ddp needs the torchrun environment; {missing} are unset (launch with "
                           "`torchrun --nproc_per_node=N -m fxscale.ddp ...`)")
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return dev


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train on every rank; returns the result dict (rank 0 also writes it to args.out)."""
    import torch.distributed as dist

    from fxscale.artifacts import write_text_atomic
    from fxscale.data import get_dataset
    from fxscale.train import TrainConfig, evaluate, train_ddp
    from fxscale.zoo import create_model

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      schedule=args.schedule, threads=args.threads, checkpoint_dir=args.checkpoint_dir)
    bundle = get_dataset(args.data)
    device = _init_group(args.device, args.backend)
    try:
        torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = create_model(args.model, num_classes=bundle.num_classes)
        result = train_ddp(model, bundle, cfg, backend=args.backend)
        test_acc = evaluate(model, bundle, "test", batch_size=cfg.eval_batch_size)
        digest = weights_digest(model)
        digests: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
        rank, world = dist.get_rank(), dist.get_world_size()
        out = {"model": args.model, "data": args.data, "world_size": world, "backend": dist.get_backend(),
               "device": str(device), "test_acc": test_acc, "weights_sha256": digests,
               "ranks_agree": len(set(digests)) == 1, "written_by_rank": rank,
               "history": {k: v for k, v in asdict(result).items() if isinstance(v, list)}}
        print(f"fxscale.ddp rank {rank}/{world} weights {digest} test_acc {test_acc:.4f}", flush=True)
        if rank == 0 and args.out:
            write_text_atomic(args.out, json.dumps(out, indent=2) + "\n")
            print(f"fxscale.ddp rank 0 wrote {args.out}", flush=True)
        dist.barrier()
        return out
    finally:
        dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    """Options of `python -m fxscale.ddp`."""
    p = argparse.ArgumentParser(prog="python -m fxscale.ddp", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits_vgg", help="zoo model name (default digits_vgg)")
    p.add_argument("--data", default="digits", help="dataset registry name (default digits)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--backend", default=None, help="process-group backend (default: nccl on CUDA, gloo on CPU)")
    p.add_argument("--checkpoint-dir", default=None, help="rank 0 writes last.pt here after every epoch")
    p.add_argument("--out", default=None, help="result JSON written by rank 0")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; an FxscaleError becomes one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except FxscaleError as exc:
        print(f"fxscale.ddp: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
