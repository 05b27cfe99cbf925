"""8 fake CPU devices give the same step as 1 device (batch split over the data axis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    from tests.helpers.train_fakes import FakeLoader
    from aspdc_jax.models import init_params, model_defaults
    from aspdc_jax.training import TrainState, make_mesh, make_train_step, mse
    from aspdc_jax.training.sharding import replicate

    assert jax.device_count() == 8, jax.devices()
    deblur, reblur = model_defaults().replace(deblur_width=4, reblur_width=4, num_groups=1).networks()
    params = init_params(deblur, jax.random.key(0))
    batches = [b for _, b in zip(range(2), FakeLoader(batch=8, seed=5, crop=16))]
    out = {}
    for n in (1, 8):
        mesh = make_mesh(jax.devices()[:n])
        tx = optax.adam(1e-3, eps=1e-18)
        state = replicate(TrainState.create(params, tx), mesh)
        step = make_train_step("deblur", deblur=deblur, reblur=reblur, tx=tx, image_loss=mse, mesh=mesh)
        losses = []
        for b in batches:
            state, m = step(state, b)
            losses.append(float(m["loss"]))
        flat = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(jax.device_get(state.params))])
        out[n] = {"losses": losses, "params": flat.tolist()}
    print("RESULT" + json.dumps({"loss_1": out[1]["losses"], "loss_8": out[8]["losses"],
          "max_param_diff": float(np.max(np.abs(np.array(out[1]["params"]) - np.array(out[8]["params"]))))}))
    """
)


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
def test_eight_fake_devices_match_one_device(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT") :])
    for a, b in zip(res["loss_1"], res["loss_8"]):
        assert abs(a - b) <= 1e-5, res
    assert res["max_param_diff"] <= 1e-5, res


TOPOLOGY = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from tests.helpers.train_fakes import fake_loader_factory, tiny_config
    from aspdc_jax.training import train_and_evaluate
    from aspdc_jax.weights import load_for_inference

    assert jax.device_count() == int(sys.argv[3]), jax.devices()
    if sys.argv[1] == "train":
        c = tiny_config()
        c.phases = sys.argv[4]
        c.data.crop_size = 16
        train_and_evaluate(c, sys.argv[2], loader_factory=fake_loader_factory, eval_pairs_fn=None)
    loaded = load_for_inference(sys.argv[2])
    np.save(sys.argv[2] + "/kernel.npy", np.asarray(loaded.deblur_params["head_conv"]["kernel"]))
    print("OK", loaded.source)
    """
)


def _topology_run(tmp_path: Path, mode: str, workdir: Path, devices: int, phases: str = "deblur") -> str:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    args = [sys.executable, "-c", TOPOLOGY, mode, str(workdir), str(devices), phases]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
def test_checkpoints_load_on_any_device_count(tmp_path):
    """Written with 2 devices, read with 1 (this process); written with 1, fine-tuned (the
    hand-off) and read with 2."""
    import numpy as np

    from aspdc_jax.training import PhaseCheckpoints, train_and_evaluate
    from aspdc_jax.weights import load_for_inference
    from tests.helpers.train_fakes import fake_loader_factory, tiny_config

    two, one = tmp_path / "two", tmp_path / "one"
    _topology_run(tmp_path, "train", two, 2)
    assert jax_device_count() == 1
    loaded = load_for_inference(two)
    np.testing.assert_array_equal(np.asarray(loaded.deblur_params["head_conv"]["kernel"]), np.load(two / "kernel.npy"))
    c = tiny_config()
    c.phases = "deblur,reblur"
    train_and_evaluate(c, one, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    out = _topology_run(tmp_path, "train", one, 2, "finetune")  # hand-off: 1-device phases, 2 devices
    assert "finetune step 6" in out
    with PhaseCheckpoints(one / "finetune", read_only=True) as ckpt:
        assert ckpt.latest_step() == 6


def jax_device_count() -> int:
    import jax

    return jax.device_count()
