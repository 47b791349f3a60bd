"""Example config: FBC on robomimic images with Diffusion Policy's recipe (Chi et al. 2023).

Use with `python train_bc.py --agent=agents/fbc_image.py --agent.network_type=chitransformer ...`.
lr 1e-4, batch 64 and weight decay 1e-6 are Diffusion Policy's values for its image U-Net runs.
"""

from agents.fbc import get_config as get_fbc_config


def get_config():
    """FBC + ChiUNet + ResNet-18 (GroupNorm) image encoder, To 2 / Tp 16 / Ta 8, AdamW 1e-4, cosine, EMA."""
    config = get_fbc_config()
    config.agent_name = 'fbc'  # registry key in agents.AGENTS
    config.obs_type = 'image'  # rgb keys + proprioceptive low-dim keys
    config.obs_steps = 2  # To (Diffusion Policy)
    config.horizon_length = 16  # Tp (Diffusion Policy)
    config.action_steps = 8  # Ta (Diffusion Policy)
    config.batch_size = 64  # Diffusion Policy's image batch size
    config.lr = 1e-4  # AdamW learning rate
    config.betas = (0.95, 0.999)  # AdamW betas
    config.weight_decay = 1e-6  # AdamW weight decay
    config.lr_schedule = 'cosine'  # cosine decay after warmup
    config.warmup_steps = 500  # linear warmup steps
    config.use_ema = True  # evaluate with EMA weights (power 0.75, max 0.9999)
    config.ema_power = 0.75  # EMA warmup power
    config.ema_max_decay = 0.9999  # EMA decay ceiling
    config.grad_clip_norm = 0.0  # Diffusion Policy does not clip
    config.flow_steps = 10  # Euler steps at sampling time
    config.network_type = 'chiunet'  # Diffusion Policy's conditional 1-D U-Net
    config.model_dim = 128  # first-level channels (~20M parameters with dim_mult (1, 2, 2))
    config.dim_mult = (1, 2, 2)  # channel multiplier per level
    config.kernel_size = 5  # Conv1d kernel size
    config.cond_predict_scale = True  # FiLM scale and bias
    config.obs_as_global_cond = True  # observation features enter FiLM
    config.emb_dim = 256  # time embedding size (each of s and t)
    config.encoder = 'resnet18'  # one ResNet-18 per camera, weights=None
    config.use_group_norm = True  # BatchNorm -> GroupNorm(C/16)
    config.random_crop = True  # random crop in training, center crop in eval
    config.crop_shape = (76, 76)  # Diffusion Policy's crop of 84x84 images
    return config
