"""The paper's recipe: GoPro, random 256x256 crops, batch 6.

Phases 1-2: Adam lr 1e-4 halved every 1000 epochs until it would fall below 1e-6
(7000 epochs); phase 3: lr 1e-5 halved every 200 epochs (800 epochs), lambda 0.1.

    python train.py --config=configs/deblur.py --workdir=runs/gopro \
        --config.data.data_dir=/path/to/GOPRO_Large
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data.dataset = "gopro"
    config.data.gopro_variant = "blur"
    config.data.crop_size = 256
    config.batch_size = 6
    config.loss = "mse"
    config.deblur.update(schedule="halving", lr=1e-4, halve_every_epochs=1000.0, min_lr=1e-6)
    config.reblur.update(schedule="halving", lr=1e-4, halve_every_epochs=1000.0, min_lr=1e-6)
    config.finetune.update(schedule="halving", lr=1e-5, halve_every_epochs=200.0, min_lr=1e-6)
    config.finetune.reblur_weight = 0.1
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    config.image_every_steps = 2000
    config.eval_limit = 16
    return config
