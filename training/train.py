"""`python -m training.train --config training/configs/default.json`: train the default classifier on CPU.

Self-Blended Images of the training faces are the only fakes it sees. Seeds fix everything (samples, weight
init, dropout); a checkpoint after every evaluation lets an interrupted run resume where it stopped
(`--resume`), and `metrics.jsonl` records each evaluation. The checkpoint with the best validation AUC on
held-out identities is kept as `best.pt`; `training.export` calibrates and exports a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm  # type: ignore[import-untyped]

from training.collect import load_faces
from training.config import TrainConfig
from training.data import CropSpec, PairDataset, load_face
from training.metrics import auc, log_loss
from training.model import Classifier, build_classifier

__all__ = ["main", "train"]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Range(torch.utils.data.Sampler[int]):
    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def _collate(items: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(items))


def val_set(cfg: TrainConfig, spec: CropSpec) -> tuple[torch.Tensor, torch.Tensor]:
    faces = [load_face(cfg.data_root, r, 200) for r in load_faces(cfg.data_root, "val")]
    if not faces:
        raise ValueError("the validation split is empty: run `python -m training.collect` first")
    ds = PairDataset(faces, spec, seed=cfg.seed + 10_000, augment=True)
    pairs = np.stack([ds[i] for i in range(cfg.val_pairs)])  # (P, 2, S, S, 3)
    x = torch.from_numpy(pairs.reshape(-1, spec.size, spec.size, 3))
    y = torch.tensor([0.0, 1.0] * cfg.val_pairs)
    return x, y


@torch.no_grad()
def _evaluate(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    probs = torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)]).numpy()
    model.train()
    return {"val_loss": log_loss(y.numpy(), probs), "val_auc": auc(y.numpy().astype(int), probs)}


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, until: int | None = None) -> Path:
    """Run (or resume) training, stopping early after step `until` if given; returns the best checkpoint."""
    torch.set_num_threads(cfg.threads)
    _seed_all(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
    spec = CropSpec(cfg.input_size, cfg.crop_margin, cfg.resize)
    records = load_faces(cfg.data_root, "train")[: cfg.max_train_faces]
    dataset = PairDataset([load_face(cfg.data_root, r, 200) for r in records], spec, seed=cfg.seed)
    val_x, val_y = val_set(cfg, spec)
    model = build_classifier(
        cfg.arch,
        drop_rate=cfg.drop_rate,
        weights=cfg.weights,
        freeze_blocks=cfg.freeze_blocks,
        head_norm=cfg.head_norm,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, best = 0, float("inf")
    last = cfg.out / "last.pt"
    if resume and last.exists():
        state: dict[str, Any] = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
        torch.set_rng_state(state["torch_rng"])
    p = cfg.pairs_per_batch
    loader: DataLoader[Any] = DataLoader(
        cast(Any, dataset),  # a map-style dataset by protocol (__getitem__, __len__)
        batch_size=p,
        sampler=_Range(step * p, cfg.steps * p),
        num_workers=cfg.workers,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(
            cfg.seed
        ),  # the loader's seed must not consume the global RNG
    )
    labels = torch.tensor([0.0, 1.0]).repeat(p)
    model.train()
    log = (cfg.out / "metrics.jsonl").open("a")
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train", unit="step")
    t0, seen, running = time.perf_counter(), 0, 0.0
    for batch in loader:
        x = batch.reshape(-1, cfg.input_size, cfg.input_size, 3)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.forward_logits(x), labels[: len(x)])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        step += 1
        seen += len(x)
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
        stopping = step == until
        if step % cfg.eval_every == 0 or step == cfg.steps or stopping:
            row = {
                "step": step,
                "train_loss": round(running, 5),
                "lr": _lr_at(step - 1, cfg),
                "images_per_s": round(seen / (time.perf_counter() - t0), 1),
                **_evaluate(model, val_x, val_y),
            }
            if -row["val_auc"] < best:  # ranking on held-out identities; loss is fixed later by calibration
                best = -row["val_auc"]
                torch.save(
                    {"model": model.state_dict(), "step": step, "config": cfg.model_dump(mode="json")},
                    cfg.out / "best.pt",
                )
            row["best_val_auc"] = -best
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.write(json.dumps(row))
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": step,
                    "best": best,
                    "torch_rng": torch.get_rng_state(),
                },
                last,
            )
        if stopping:
            break
    bar.close()
    log.close()
    return cfg.out / "best.pt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="run directory (overrides the config)")
    parser.add_argument("--steps", type=int, help="override the config's steps")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--until", type=int, help="stop (with a checkpoint) after this step; resume later")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = TrainConfig.load(args.config, out=args.out, steps=args.steps)
    best = train(cfg, resume=args.resume, progress=not args.no_progress, until=args.until)
    print(json.dumps({"best_checkpoint": str(best)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
