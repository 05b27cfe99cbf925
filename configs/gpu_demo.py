"""GPU demo: the deblurring phase on the built-in synthetic blur, time-boxed on one H100.

    python train.py --config=configs/gpu_demo.py --workdir=runs/gpu_demo \\
        --config.max_train_seconds=240

``benchmarks/device_check.py`` runs it with ``max_train_seconds`` set to what its 9-minute
budget leaves, ``data.num_workers`` to the cores less two, and ``deblur.num_epochs`` /
``warmup_epochs`` sized from the measured step and data rates, so that the cosine
schedule ends when the time does. Differences from the paper (configs/default.py), and why:

* Only the deblurring phase (phase 1): the issue's bar is about D(b); phases 2-3 would
  split a few minutes three ways.
* DeblurNet width 16 with the paper's 6 ASPDC groups (3.91 M parameters, 14.9 MiB in the
  published float32 format). The export has to stay under 30 MiB to be committed and under
  the device tool's 16 MiB per returned file: the paper's width 32 is 57 MiB and width 24
  with 6 groups 33 MiB, so width 16 is the widest at full depth. Depth is kept rather than
  width because the strong band's 16-24 px blur needs the receptive field of all six
  groups (at a quarter of the resolution); width 16 costs 0.53 MFLOP per pixel forward
  (the paper's 2.02), 1.57 per pixel for a training step.
* 16 crops of 256x256 per step: the test crops' size, and 2.7x the paper's pixels per
  step (6x256x256), so the gradient is less noisy than the quickstart's 8x64x64 (31x the
  pixels) and a higher learning rate holds. At an estimated 15-25 TFLOP/s of this narrow
  network in bfloat16 (the paper-width float32 step ran at 28 TFLOP/s on an H100) a step
  takes about 65-110 ms: 9-15 steps/s, 150-250 crops/s. The synthetic generator costs
  26.7 CPU ms per 256^2 pair on the reference CPU (37 pairs/s per core), and it has a large
  fixed cost per example (128^2: 15.6 ms, 192^2: 20.4 ms), so 256^2 crops are the cheapest
  per pixel. 14 workers give ~525 pairs/s, or ~315 if the host's 16 cores are 8 with
  hyper-threads: 1.3-3.5x what the GPU should take (docs/gpu.md).
* bfloat16 compute: the paper-width 720p forward ran 1.4-2.8x faster than float32 on an
  H100; parameters, Adam and the loss stay float32, and the deformable convolution samples
  at float32 coordinates, so the precision lost is in activations only.
* The quickstart's short-run recipe (configs/quickstart.py says why for each): zero-init
  offset / mask predictors at a tenth of the learning rate, the last conv scaled by 0.1 at
  init (D(b) starts near b), Adam eps 1e-8, gradient clipping at 0.2, Charbonnier loss
  (MSE over-sharpened the mild band), training photos also at x1.5 and x2.
* Peak learning rate 5e-4 (the quickstart's 3e-4 at 31x noisier gradients), 3% linear
  warm-up, cosine to 1e-6: a cosine that completes gives most of its gain in the last,
  low-rate steps, which is why device_check sizes it to the time box rather than letting
  the time box cut it short.
* EMA 0.998 of the weights (about the last 500 steps), evaluated and exported.
* A nominal epoch is 100 steps (1600 crops); the default length, 30 epochs (3000 steps),
  is what device_check replaces with its measured plan.
* No in-phase validation or TensorBoard images (they take time from the steps); the
  held-out test is scored once after the phase (all 36 pairs), and checkpoints every 500
  steps keep something to publish if the run is stopped from outside.
"""

from __future__ import annotations

import ml_collections

from aspdc_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.phases = "deblur"
    config.model.deblur_width = 16
    config.model.reblur_width = 8  # not trained here; kept small
    config.model.zero_init_offsets = True
    config.init_residual_scale = 0.1

    config.data.dataset = "synthetic"
    config.data.epoch_size = 1600  # 100 steps of 16
    config.data.num_workers = 14  # a 16-core host: all but the trainer's and XLA's
    config.data.synthetic_photo_scales = (1.0, 1.5, 2.0)
    config.batch_size = 16
    config.compute_dtype = "bfloat16"

    config.adam_eps = 1e-8
    config.offset_lr_multiplier = 0.1
    config.grad_clip_norm = 0.2
    config.loss = "charbonnier"
    config.ema_decay = 0.998
    config.deblur.update(schedule="cosine", lr=5e-4, warmup_epochs=0.9)
    config.deblur.num_epochs = 30.0

    config.max_train_seconds = 240.0
    config.checkpoint_every_steps = 500
    config.image_every_steps = 0
    config.eval_limit = 36  # every held-out pair: 4 photos x 3 bands x 3 crops
    return config
