"""Example config: FBC on robomimic images with Diffusion Policy's recipe (Chi et al. 2023).

Use with `python train_bc.py --agent=agents/fbc_image.py --agent.network_type=chitransformer ...`.
lr 1e-4, batch 64 and weight decay 1e-6 are Diffusion Policy's values for its image U-Net runs.
"""

from agents.fbc import get_config as get_fbc_config


def get_config():
    """FBC's config with the five fields Diffusion Policy's image recipe sets differently.

    FBC's defaults already are the rest of the recipe: To 2 / Tp 16 / Ta 8, AdamW lr 1e-4, betas
    (0.95, 0.999), weight decay 1e-6, cosine schedule with 500 warmup steps, EMA (power 0.75, max 0.9999),
    no clipping, 10 Euler steps, ChiUNet sizes (128, (1, 2, 2), kernel 5, FiLM scale), GroupNorm and random
    crops in training.
    """
    config = get_fbc_config()
    config.obs_type = 'image'  # rgb keys + proprioceptive low-dim keys (the data must have them)
    config.batch_size = 64  # Diffusion Policy's image batch size
    config.network_type = 'chiunet'  # Diffusion Policy's conditional 1-D U-Net
    config.encoder = 'resnet18'  # one ResNet-18 per camera, weights=None
    config.crop_shape = (76, 76)  # Diffusion Policy's crop of 84x84 images
    return config
