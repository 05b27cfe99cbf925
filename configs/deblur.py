"""The paper's recipe: GoPro, random 256x256 crops, batch 6 (configs/default.py is the
paper; this file states only what a GoPro run changes on top of it).

Phases 1-2: Adam lr 1e-4 halved every 1000 epochs until it would fall below 1e-6
(7000 epochs); phase 3: lr 1e-5 halved every 200 epochs (800 epochs), lambda 0.1.

    python train.py --config=configs/deblur.py --workdir=runs/gopro \
        --config.data.data_dir=/path/to/GOPRO_Large
"""

from __future__ import annotations

import ml_collections

from aspdc_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    # Not in the paper, as BasicSR's deblurring configs (NAFNet, Restormer) do: an EMA of the
    # weights. GoPro has 350 steps per epoch at batch 6 and the paper runs ~2.4 M steps;
    # 0.999 averages over the last ~1000 steps (~3 epochs), which smooths the step-to-step
    # noise of batch-6 Adam without lagging the halving schedule (one halving = 350 k steps).
    config.ema_decay = 0.999
    # Validate every 50 epochs on 16 fixed training images; the best is kept in
    # WORKDIR/<phase>/best/.
    config.eval_every_steps = 17_500
    config.eval_limit = 16
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    config.image_every_steps = 2000
    return config
