"""`StageRun`: one stage as the trainer runs it, resolved once from the manifest, the stage and its contract.

Everything the engine, the loop and the checkpoints need about a stage is here, so functions take a `StageRun`
instead of a dozen fields relayed from the manifest: the batch layout and step count come from the stage's
`StageContract` (what the plan holds), the optimizer, freezing and LoRA from the stage's config, the DeepSpeed
settings and the model-wide options (connector lr, vision tower checkpointing) from the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mixer.contract import StageContract
from mixer.manifest import Manifest, ModelConfig
from mixer.manifest.runtime import DeepSpeedSettings
from mixer.manifest.stages import StageConfig
from train import checkpoint


@dataclass(frozen=True)
class StageRun:
    """A stage ready to train: what to train (`stage`), on what batches (`steps` × `global_batch`), where to save."""

    stage: StageConfig
    ds: DeepSpeedSettings
    steps: int  # optimizer steps: the contract's num_sequences // global_batch
    global_batch: int  # sequences per optimizer step over all ranks
    micro_batch: int  # sequences per rank per forward pass
    run_dir: Path  # checkpoints go to checkpoint.checkpoint_dir(run_dir, index, name)
    metrics_path: Path
    index: int = 0
    resume: bool = False
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the stage end)
    keep_last: int = 2
    connector_lr: float | None = None
    vision_checkpointing: bool = False

    @classmethod
    def resolve(
        cls,
        m: Manifest,
        index: int,
        contract: StageContract,
        run_dir: Path,
        *,
        stage: StageConfig | None = None,
        model: ModelConfig | None = None,
        resume: bool = False,
        keep_last: int = 2,
        metrics_path: Path | None = None,
    ) -> StageRun:
        """Stage `index` of `m` (or `stage`, an ablation proxy's) over the plan `contract` describes."""
        stage = stage or m.stages[index]
        model = model or m.model
        return cls(
            stage=stage,
            ds=m.deepspeed,
            steps=contract.steps,
            global_batch=contract.global_batch,
            micro_batch=contract.micro_batch,
            run_dir=Path(run_dir),
            metrics_path=metrics_path or Path(run_dir) / "metrics" / f"{index + 1}-{stage.name}.jsonl",
            index=index,
            resume=resume,
            checkpoint_every=stage.checkpoint_every,
            keep_last=keep_last,
            connector_lr=model.connector.lr,
            vision_checkpointing=model.vision.checkpointing,
        )

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def where(self) -> str:
        """How errors name this stage: `stages[i]`."""
        return f"stages[{self.index}]"

    @property
    def checkpoints(self) -> Path:
        """The stage's checkpoint folder, RUN/checkpoints/NN-<stage>."""
        return checkpoint.checkpoint_dir(self.run_dir, self.index, self.stage.name)
