"""The 2-hour CPU recipe for demo weights on the built-in synthetic blur (minutes on a GPU).
Not shipped: on the reference CPU it does not reach its goal (+2 dB in the gopro band);
see "What training achieves on a CPU" in the README.

    python train.py --config=configs/demo.py --workdir=runs/demo

Differences from the quickstart (configs/quickstart.py): only the deblurring phase,
96x96 crops (2.25x the pixels per step: less noisy gradients) and a ~15x longer
schedule. The network is the quickstart's.
"""

from __future__ import annotations

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
    config = quickstart.get_config()
    config.phases = "deblur"
    config.data.crop_size = 96
    config.data.num_workers = 1
    config.deblur.warmup_epochs = 6.0  # the quickstart's cosine schedule, longer
    config.deblur.num_epochs = 200.0  # 6400 steps of 8 crops
    config.log_every_steps = 50
    config.checkpoint_every_steps = 400
    config.image_every_steps = 2000
    config.eval_every_steps = 800
    return config
