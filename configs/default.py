"""Base configuration: the paper's recipe (DESIGN.md section 6). Variants override it."""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Networks (DESIGN.md section 5). Table 5 ablations override branches/branch_repeat/fusion.
    config.model = ml_collections.ConfigDict()
    config.model.deblur_width = 32
    config.model.reblur_width = 16
    config.model.num_groups = 6
    config.model.branches = ("static", "d1", "d2", "d4")
    config.model.branch_repeat = 1
    config.model.fusion = "afim"  # "afim" | "sum"
    config.model.zero_init_offsets = False
    config.model.remat = False

    # Data (DESIGN.md section 7).
    config.data = ml_collections.ConfigDict()
    config.data.dataset = "gopro"
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.tfds_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.crop_size = 256
    config.data.num_workers = 2
    config.data.gopro_variant = "blur"
    config.data.epoch_size = 2103

    # Training (filled in by the training code; see aspdc_jax/training).
    config.batch_size = 6
    return config
