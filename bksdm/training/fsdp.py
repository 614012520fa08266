"""Fully sharded training (``trainer=fsdp``): Lightning's FSDPStrategy fitted to a distillation run.

Only the registered modules are sharded: the student and its EMA copy (with their gradients and optimizer
state). The frozen teacher, VAE and text encoder live outside module registration (``FrozenTeacher``), so
each rank keeps its own full copy in the frozen precision, unwrapped and never synchronised.

The student U-Net and each of its down, mid and up blocks are FSDP units, a transformer student and each
block of its stacks likewise (FLUX's double- and single-stream blocks, SD3's joint blocks, PixArt's blocks);
the EMA copy is wrapped by the same rule, so its shards hold the same elements as the student's and the EMA
update runs shard by shard.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from diffusers.models.unets.unet_2d_blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
from torch.distributed.fsdp.wrap import CustomPolicy

from bksdm.training.atomic import replace_directory

# the units: each block's parameters are gathered just before it runs and freed after it
WRAPPED_CLASSES = {
    UNet2DConditionModel,
    CrossAttnDownBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    CrossAttnUpBlock2D,
    UpBlock2D,
}
TRANSFORMER_UNITS = (
    FluxTransformer2DModel, FluxTransformerBlock, FluxSingleTransformerBlock, SD3Transformer2DModel,
    JointTransformerBlock, PixArtTransformer2DModel,
)  # fmt: skip


def is_fsdp_unit(module: torch.nn.Module) -> bool:
    """Whether ``module`` is an FSDP unit of a student: a U-Net or one of its blocks (``WRAPPED_CLASSES``),
    a transformer or a block of its stacks. PixArt's blocks are diffusers' ``BasicTransformerBlock``, which
    the U-Nets' attention stacks hold too: only PixArt's (``ada_norm_single``) are units, so a U-Net's units
    stay its blocks."""
    if isinstance(module, (*WRAPPED_CLASSES, *TRANSFORMER_UNITS)):
        return True
    return isinstance(module, BasicTransformerBlock) and module.norm_type == "ada_norm_single"


STATE_DICT_TYPES = ("sharded", "full")
FSDP_PREFIX = "_fsdp_wrapped_module."


class DistillFSDPStrategy(FSDPStrategy):
    """FSDPStrategy with the U-Net block wrap policy, atomic sharded checkpoints, checkpoints loaded
    without running pickled code, and CPU support (gloo; for tests and debugging).

    Args:
        state_dict_type: ``sharded`` (default): every rank writes its own shards into a checkpoint folder,
            no rank gathers the model; ``full``: one file, gathered on rank 0 (GPU only: Lightning's
            gather frees memory it still reads when the shards live on the CPU, Lightning-AI/pytorch-
            lightning#21804).
        auto_wrap_policy: the FSDP units; None: the student and its blocks (``is_fsdp_unit``).
        **kwargs: the rest of Lightning's ``FSDPStrategy`` (``sharding_strategy``, ``cpu_offload``,
            ``mixed_precision``, ``process_group_backend``, ...).
    """

    def __init__(self, state_dict_type: str = "sharded", auto_wrap_policy: Any = None, **kwargs: Any):
        if state_dict_type not in STATE_DICT_TYPES:
            raise ValueError(
                f"trainer.strategy.state_dict_type={state_dict_type!r}: accepted are {STATE_DICT_TYPES}"
            )
        super().__init__(
            state_dict_type=state_dict_type,
            auto_wrap_policy=auto_wrap_policy or CustomPolicy(is_fsdp_unit),
            **kwargs,
        )

    def _configure_launcher(self) -> None:
        # called when the Trainer is built and the devices are known: before any model is loaded
        if self.root_device.type == "cpu" and self._state_dict_type == "full":
            raise ValueError(
                "trainer.strategy.state_dict_type=full cannot save on the CPU (Lightning gathers the model "
                "with offload_to_cpu=True, which crashes there: Lightning-AI/pytorch-lightning#21804); "
                "accepted on the CPU: sharded"
            )
        super()._configure_launcher()

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type == "cpu" and not is_sharded(model):
            # Lightning passes device_id=root_device.index, which is None on the CPU, and torch's FSDP then
            # refuses CPU modules: wrap here with the device itself, Lightning keeps the wrapped model
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self.root_device,
                **self.kwargs,
            )
            self.kwargs.pop("auto_wrap_policy", None)  # applied: Lightning would warn that it is ignored
        return super()._setup_model(model)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any = None) -> None:
        """Sharded checkpoints are written into a hidden staging folder by every rank and renamed into
        place by rank 0 once all are done, so a kill mid-save leaves the previous checkpoint whole."""
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        staging = target.with_name(f".{target.name}.partial")
        if self.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed mid-save
        self.barrier("fsdp_staging_clean")
        with internal_deprecations_hidden():
            super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("fsdp_shards_written")
        if self.is_global_zero:
            replace_directory(staging, target)
        self.barrier("fsdp_checkpoint_in_place")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(checkpoint_path)
        if path.is_file():
            # Lightning reads full checkpoints with its own unrestricted unpickler: vet the file first
            # (mmap: the tensors' bytes are not read)
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        with internal_deprecations_hidden():
            return super().load_checkpoint(checkpoint_path, weights_only=True)


@contextlib.contextmanager
def internal_deprecations_hidden() -> Iterator[None]:
    """Lightning's sharded checkpoints go through torch APIs that warn of their own deprecation, a dozen
    lines per save that no setting of ours can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Please use DTensor instead", FutureWarning)
        warnings.filterwarnings(
            "ignore", ".*_get_pg_default_device|Multiple backends are registered", UserWarning
        )
        yield


def is_sharded(module: torch.nn.Module) -> bool:
    return any(isinstance(m, FullyShardedDataParallel) for m in module.modules())


def whole_module(module: torch.nn.Module, rank0_only: bool) -> torch.nn.Module | None:
    """``module`` with whole weights, to run outside the training step (sampling, evaluation, export).

    An unsharded module is returned as it is. For an FSDP-sharded one every rank must call together: the
    shards are gathered and a plain, unwrapped copy (same class and config, full precision, on the
    shards' device) is returned on every rank, or with ``rank0_only`` on rank 0 (None on the others).
    """
    if not is_sharded(module):
        return module
    plain = module.module if isinstance(module, FullyShardedDataParallel) else module
    copy = None
    # gathered where the shards are (offload_to_cpu frees storage still in use when they are on the CPU)
    with FullyShardedDataParallel.summon_full_params(module, writeback=False, rank0_only=rank0_only):
        if not rank0_only or torch.distributed.get_rank() == 0:
            state = {
                name.replace(FSDP_PREFIX, ""): tensor.detach().clone()
                for name, tensor in (*module.named_parameters(), *module.named_buffers())
            }
            with torch.device("meta"):
                copy = type(plain).from_config(plain.config)
            copy.load_state_dict(state, assign=True)
    return copy


def gradient_shard_group(model: torch.nn.Module) -> torch.distributed.ProcessGroup | None:
    """The process group over which ``model``'s gradients are split (a global gradient norm is the
    root of the sum of its ranks' squared shard norms), or None when every rank holds whole gradients
    (not sharded, or FSDP's ``NO_SHARD``)."""
    if not isinstance(model, FullyShardedDataParallel):
        return None
    if model.sharding_strategy == ShardingStrategy.NO_SHARD:
        return None
    return model.process_group  # under HYBRID_SHARD: the ranks of one node, each node holding a replica
