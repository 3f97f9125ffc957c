"""One training run's settings, read from a JSON file (`training/configs/*.json`) and kept with the run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Model name in the manifest.")
    version: str = "1.0.0"
    arch: str = "mobilenetv3_small_100"
    input_size: int = Field(192, ge=32, le=512)
    crop_margin: float = Field(0.3, ge=0.0, le=1.0)
    resize: Literal["linear", "area_cubic"] = "linear"
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0)
    weights: Path | None = Field(
        None,
        description="Local state dict to start the backbone from (pretrained archs: training.pretrained).",
    )
    freeze_blocks: int = Field(
        0,
        ge=0,
        description="Pretrained archs: the first N feature blocks get no gradient and stay in eval mode.",
    )
    head_norm: Literal["batch", "layer"] = Field(
        "batch", description="Pretrained archs: normalisation of the pooled features before the head."
    )
    data_root: Path = Path(".cache/training")
    out: Path = Path(".cache/training/runs/default")
    steps: int = Field(4000, ge=1)
    pairs_per_batch: int = Field(16, ge=1, description="A batch holds this many real + self-blended pairs.")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(200, ge=0)
    eval_every: int = Field(250, ge=1)
    val_pairs: int = Field(160, ge=1)
    seed: int = 0
    threads: int = Field(2, ge=1)
    workers: int = Field(1, ge=0)
    max_train_faces: int | None = Field(
        None, ge=1, description="Use only the first N training faces (tests)."
    )

    @classmethod
    def load(cls, path: Path, **overrides: object) -> TrainConfig:
        data = cls.model_validate_json(path.read_text()).model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)
