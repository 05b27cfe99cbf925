"""Flax (linen) networks of ASPDC: DeblurNet, its ASPDC blocks, and ReblurNet.

Variables are ``{"params": ...}`` only (no batch statistics)::

    deblur = DeblurNet()                       # width 32, six ASPDC groups
    params = deblur.init(rng, x)["params"]      # x: (B, H, W, 3) in [-1, 1], H, W % 4 == 0
    params = init_params(deblur, rng)           # module.init's params (example inputs built in)
    out = deblur.apply({"params": params}, x)   # DeblurOutput(deblurred, residual, offsets, attention)
    reblur = ReblurNet()                        # width 16
    y = reblur.apply({"params": rparams}, blurred, sharp)  # H, W % 8 == 0
"""

from aspdc_jax.models.aspdc import AFIM, ASPDC, BRANCH_DILATIONS, DeformBranch
from aspdc_jax.models.config import (
    ABLATIONS,
    ModelSettings,
    model_config_dict,
    model_defaults,
    model_from_config,
    networks_from_saved,
)
from aspdc_jax.models.deblur_net import DeblurGroup, DeblurNet, DeblurOutput
from aspdc_jax.models.init import init_params
from aspdc_jax.models.layers import ConvTranspose2x, DeformConv, ResBlock
from aspdc_jax.models.reblur_net import ReblurNet

__all__ = [
    "ABLATIONS",
    "AFIM",
    "ASPDC",
    "BRANCH_DILATIONS",
    "ConvTranspose2x",
    "DeblurGroup",
    "DeblurNet",
    "DeblurOutput",
    "DeformBranch",
    "DeformConv",
    "ModelSettings",
    "ReblurNet",
    "ResBlock",
    "init_params",
    "model_config_dict",
    "model_defaults",
    "model_from_config",
    "networks_from_saved",
]
