"""A narrow SDXL-shaped U-Net built in code, for tests of SDXL students."""

import torch
from diffusers import UNet2DConditionModel


def narrow_sdxl() -> UNet2DConditionModel:
    """SDXL's topology at narrow widths: three stages, depths 1 / 2 / 4, text and time added conditioning."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 4), attention_head_dim=(2, 4, 4), cross_attention_dim=24,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
    )  # fmt: skip
