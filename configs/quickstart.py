"""Quickstart: small networks on the built-in synthetic motion blur, all three phases in
about 12 minutes on a 2-core CPU.

    python train.py --config=configs/quickstart.py --workdir=runs/quickstart

Differences from the paper (configs/deblur.py): narrow networks (DeblurNet width 16 with
2 ASPDC groups, ReblurNet width 8 with a residual output), 64x64 crops of freshly
synthesised blur (training photos and procedural scenes; held-out photos for the test
PSNR), batch 8, warm-up and cosine decay instead of the halving schedule, Adam eps 1e-8
instead of 1e-18, the offset / mask predictors at a tenth of the learning rate, gradient
clipping, the Charbonnier (smooth L1) loss instead of MSE, a nominal epoch of 256
examples, zero-initialised offset/mask predictors and down-scaled last convs (so D(b)
starts near b and R(b, s) near s).
"""

from __future__ import annotations

import ml_collections

from aspdc_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.deblur_width = 16
    config.model.reblur_width = 8
    config.model.num_groups = 2
    # Short runs learn much faster when the deformable branches start as plain convs and
    # the outputs start close to their inputs (the paper: Xavier everywhere, scale 1).
    config.model.zero_init_offsets = True
    config.model.reblur_residual = True
    config.init_residual_scale = 0.1

    config.data.dataset = "synthetic"
    config.data.crop_size = 64
    config.data.epoch_size = 256
    config.data.num_workers = 0
    # The training photos also at x1.5 and x2: softer copies, like many real photos.
    config.data.synthetic_photo_scales = (1.0, 1.5, 2.0)
    config.batch_size = 8

    # Adam eps 1e-8: the paper's 1e-18 makes every update ~lr-sized however tiny and noisy
    # the gradient (e.g. of the zero-initialised offset predictors).
    config.adam_eps = 1e-8
    # The gradients of 8 crops of 64 px are ~12x noisier than the paper's 6 x 256 px, and
    # Adam moves every weight by ~lr per step whatever the noise: at lr 1e-3 the train loss
    # rose above its identity start and never came back. lr 3e-4 with warm-up, clipping,
    # and the offset / mask predictors at a tenth of it keep the net near D(b) = b until
    # the gradients agree.
    config.offset_lr_multiplier = 0.1
    config.grad_clip_norm = 0.2
    # Charbonnier instead of MSE: MSE is dominated by the most blurred examples, and an
    # MSE-trained net sharpened mild blur too much (-1.2 dB in the mild band).
    config.loss = "charbonnier"

    config.deblur.update(schedule="cosine", lr=3e-4, min_lr=3e-6, warmup_epochs=2.0)
    config.deblur.num_epochs = 60.0  # 1920 steps
    config.reblur.update(schedule="cosine", lr=5e-4, min_lr=5e-6, warmup_epochs=1.0)
    config.reblur.num_epochs = 12.0
    # Phase 3 at a tenth of phase 1's learning rate, as in the paper (1e-4 -> 1e-5).
    config.finetune.update(schedule="cosine", lr=3e-5, min_lr=3e-6)
    config.finetune.num_epochs = 6.0

    config.log_every_steps = 10
    config.checkpoint_every_steps = 200
    config.image_every_steps = 200
    config.eval_limit = 36  # every held-out pair: 4 photos x 3 bands x 3 crops
    return config
