"""Base configuration: the paper's recipe, the one source of every default; each field is
defined and documented here. Shipped with the package (`aspdc_jax.settings.base_config`
reads it); from a checkout ``--config=configs/default.py`` names it, and the variants
(``configs/*.py``) override it."""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Networks. Table 5 ablations override branches/branch_repeat/fusion.
    config.model = ml_collections.ConfigDict()
    config.model.deblur_width = 32
    config.model.reblur_width = 16
    config.model.num_groups = 6
    config.model.branches = ("static", "d1", "d2", "d4")
    config.model.branch_repeat = 1
    config.model.fusion = "afim"  # "afim" | "sum"
    config.model.zero_init_offsets = False
    config.model.remat = False
    # ReblurNet returns sharp + its output (not in the paper; the official weights need False).
    config.model.reblur_residual = False

    # Data.
    config.data = ml_collections.ConfigDict()
    config.data.dataset = "gopro"
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.tfds_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.crop_size = 256
    config.data.num_workers = 2
    config.data.gopro_variant = "blur"
    config.data.epoch_size = 2103  # synthetic: fresh examples per nominal epoch
    config.data.augment = True  # random flip/transpose (same for both images of a pair)
    config.data.read_threads = 2  # grain read threads per process/worker
    # Synthetic blur (dataset="synthetic"; data_dir = a folder of sharp photos or None for
    # the photos bundled with scikit-image). See aspdc_jax/data/synthetic/.
    config.data.synthetic_strength = 1.0  # multiplies every motion (0 = no blur)
    # Camera blur length is log-uniform in [1, synthetic_max_blur] px (x strength); a
    # share of examples is nearly sharp so a model learns to leave sharp content alone.
    config.data.synthetic_max_blur = 24.0
    config.data.synthetic_sharp_probability = 0.1
    config.data.synthetic_object_probability = 0.3  # chance of 1-2 moving objects
    config.data.synthetic_noise_sigma = 0.01  # max noise std (mid-grey, [0, 1] units), linear light
    config.data.synthetic_gamma = 2.2  # CRF gamma (+-0.2 per example; averaging in linear light)
    config.data.synthetic_saturation_probability = 0.25  # highlights brighter than white, clipped
    config.data.synthetic_jpeg_probability = 0.25  # JPEG quality 60-95 on the blurred image
    # Share of training examples drawn from fresh procedural scenes (textured dead
    # leaves) instead of the training photos.
    config.data.synthetic_scene_probability = 0.5
    # Scales at which the training photos are used (Lanczos; 1.0 = as they are), e.g.
    # (1.0, 1.5, 2.0): upscaled copies are softer, like many real photos. Copies smaller
    # than the crop are skipped. Test pairs always use the photos at their own size.
    config.data.synthetic_photo_scales = (1.0,)
    # Held-out test: this many fixed crops per photo in each strength band (mild ~32 dB,
    # gopro ~26 dB, strong ~23 dB blurred; aspdc_jax.data.synthetic.BANDS).
    config.data.synthetic_test_crops_per_photo = 3
    config.data.synthetic_test_crop_size = 256
    config.data.synthetic_test_seed = 0

    # ---- Training (owned by aspdc_jax/training) ----
    # Phases to run, comma-separated, in order: any of deblur, reblur, finetune.
    # `--config.phases=finetune` runs only phase 3 (phases 1-2 must be finished).
    config.phases = "deblur,reblur,finetune"
    config.batch_size = 6  # global batch, split over devices and hosts
    # Loss on the images: "mse" (paper: plain MSE on [-1, 1] images), "imagenet_mse"
    # (the official release: MSE on ImageNet-normalised [0, 1] images) or "charbonnier"
    # (smooth L1, sqrt(d^2 + 1e-6); not in the paper, used by the CPU quickstart).
    config.loss = "mse"
    # Adam(b1, b2, eps) as in the paper (eps 1e-18).
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.adam_eps = 1e-18
    config.grad_clip_norm = 0.0  # 0 disables global-norm clipping (the paper has none)
    # Split each step's batch into this many micro-batches whose gradients are summed
    # before the update: the same update with a k-th of the activation memory.
    config.grad_accum_steps = 1
    # Exponential moving average of the weights (0 = off), with a warm-up
    # min(decay, (1 + t) / (10 + t)). When on, the EMA is checkpointed, evaluated, handed
    # to the next phase and exported for inference.
    config.ema_decay = 0.0
    # Multiplies the learning rate of the deformable branches' offset and mask predictors
    # (1.0 = the paper: one learning rate for everything).
    config.offset_lr_multiplier = 1.0
    # Compute dtype of the train steps: "float32" (paper) or "bfloat16" (mixed precision for
    # GPUs/TPUs: activations and convolutions in bfloat16; parameters, optimizer state,
    # losses and the after-phase evaluation stay float32). On CPU bfloat16 is slower.
    config.compute_dtype = "float32"
    # Multiplies DeblurNet's last conv (tail_conv) kernel at phase-1 init (and ReblurNet's
    # with model.reblur_residual): 1.0 = the paper's Xavier init; small values start D(b)
    # close to b (and R(b, s) close to s), which helps short runs.
    config.init_residual_scale = 1.0

    # Per-phase schedules, all in epochs (steps = epochs * steps_per_epoch, where
    # steps_per_epoch = max(1, examples_per_epoch // batch_size)).
    # schedule "halving": lr halved every `halve_every_epochs` until it would fall below
    # `min_lr`; `num_epochs` None = run exactly until then (paper). "constant": lr fixed.
    # "cosine": cosine decay to min_lr. `warmup_epochs` adds a linear warm-up to any of them.
    config.deblur = _phase(lr=1e-4, halve_every_epochs=1000.0, min_lr=1e-6)
    config.reblur = _phase(lr=1e-4, halve_every_epochs=1000.0, min_lr=1e-6)
    config.finetune = _phase(lr=1e-5, halve_every_epochs=200.0, min_lr=1e-6)
    # Weight lambda of the reblurring consistency term MSE(R(b, D(b)), b) (Table 6 sweep).
    config.finetune.reblur_weight = 0.1

    # Bookkeeping.
    config.log_every_steps = 50  # tqdm postfix, TensorBoard scalars, metrics JSONL
    config.image_every_steps = 1000  # TensorBoard image grid blurred / output / sharp
    config.checkpoint_every_steps = 1000  # plus one at the end of every phase
    config.max_checkpoints_to_keep = 2
    config.eval_limit = 8  # test pairs in the after-phase PSNR evaluation (0 disables)
    config.eval_every_steps = 0  # also evaluate during a phase (0: only at its end)
    config.eval_split = "test"  # the after-phase evaluation
    # The validation set of the in-phase evaluations (eval_every_steps > 0), on which the
    # best step is kept as an export in WORKDIR/<phase>/best/: "val" is a fixed, seeded
    # part of the training data (see aspdc_jax.data.eval_pairs); "test" only if you mean it.
    config.val_split = "val"
    config.progress_bar = True
    # Stop a phase cleanly after this many seconds of training (0 = no limit): a final
    # checkpoint, the after-phase evaluation and the hand-off run as at the phase's end,
    # and the next phase starts from there. For time-boxed runs (a lent GPU, a CI smoke).
    config.max_train_seconds = 0.0
    return config


def _phase(
    *,
    lr: float,
    halve_every_epochs: float,
    min_lr: float,
    schedule: str = "halving",
    num_epochs: float | None = None,
    warmup_epochs: float = 0.0,
) -> ml_collections.ConfigDict:
    phase = ml_collections.ConfigDict()
    phase.schedule = schedule
    phase.lr = lr
    phase.min_lr = min_lr
    phase.halve_every_epochs = halve_every_epochs
    phase.num_epochs = ml_collections.FieldReference(num_epochs, field_type=float)
    phase.warmup_epochs = warmup_epochs
    return phase
