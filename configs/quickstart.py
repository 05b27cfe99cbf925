"""Quickstart: small networks on the built-in synthetic motion blur, all three phases in
about 7 minutes on a 2-core CPU.

    python train.py --config=configs/quickstart.py --workdir=runs/quickstart

Differences from the paper (configs/deblur.py): narrow networks (DeblurNet width 16 with
2 ASPDC groups, ReblurNet width 8), 64x64 crops of freshly synthesised blur (the photos
bundled with scikit-image, held-out photos for the test PSNR), batch 8, a higher learning
rate with warm-up and cosine decay instead of the halving schedule, Adam eps 1e-8 instead
of 1e-18, the Charbonnier (smooth L1) loss instead of MSE, a nominal epoch of 256
examples, the training photos also used upscaled x1.5 and x2, zero-initialised
offset/mask predictors and a down-scaled last DeblurNet conv (so D(b) starts near b).
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.deblur_width = 16
    config.model.reblur_width = 8
    config.model.num_groups = 2
    # Short runs learn much faster when the deformable branches start as plain convs and
    # D(b) starts close to b (the paper: Xavier everywhere, scale 1).
    config.model.zero_init_offsets = True
    config.init_residual_scale = 0.1

    config.data.dataset = "synthetic"
    config.data.crop_size = 64
    config.data.epoch_size = 256
    config.data.num_workers = 0
    # The training photos also at x1.5 and x2: softer copies, closer to photos such as the
    # held-out chelsea and rocket (deblur-only runs of ~200 s, held-out gain: +0.19 dB
    # without, +0.31 with; with coffee and astronaut held out instead: +0.52 / +0.50).
    config.data.synthetic_photo_scales = (1.0, 1.5, 2.0)
    # The offset / mask predictors move at a tenth of the learning rate, and gradients
    # are clipped: without both, lr 1e-3 sent the train loss above its identity start.
    config.offset_lr_multiplier = 0.1
    config.grad_clip_norm = 0.2
    config.batch_size = 8

    # Adam eps 1e-8: the paper's 1e-18 makes every update ~lr-sized however tiny and noisy
    # the gradient (e.g. of the zero-initialised offset predictors).
    config.adam_eps = 1e-8
    # Charbonnier instead of MSE: in short runs it generalises better to unseen photos
    # (held-out gain after ~200 s of deblur training: MSE -0.08 dB, Charbonnier +0.19 dB;
    # MSE-trained nets lose most on the smooth sky of `rocket`).
    config.loss = "charbonnier"

    # Time split (~4.5 deblur steps/s on an idle 2-core CPU, ~7 min for all three phases
    # including compilation and the after-phase evaluations): deblur gets most of it.
    # 54 instead of 36 deblur epochs measured no better (+0.20 vs +0.23 dB held out).
    config.deblur.update(schedule="cosine", lr=1e-3, min_lr=1e-5, warmup_epochs=0.5)
    config.deblur.num_epochs = 36.0
    config.reblur.update(schedule="cosine", lr=1e-3, min_lr=1e-5, warmup_epochs=1.0)
    config.reblur.num_epochs = 12.0
    # Phase 3 at a tenth of phase 1's learning rate, as in the paper (1e-4 -> 1e-5).
    config.finetune.update(schedule="cosine", lr=1e-4, min_lr=1e-5, warmup_epochs=0.0)
    config.finetune.num_epochs = 6.0
    config.finetune.reblur_weight = 0.1

    config.log_every_steps = 10
    config.checkpoint_every_steps = 200
    config.image_every_steps = 200
    config.eval_limit = 12  # all 2 held-out photos x 6 fixed crops
    return config
