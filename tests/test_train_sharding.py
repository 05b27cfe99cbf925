"""8 fake CPU devices give the same step as 1 device (batch split over the data axis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    from tests.helpers.train_fakes import FakeLoader
    from aspdc_jax.models import model_from_config
    from aspdc_jax.training import TrainState, init_params, make_mesh, make_train_step, mse
    from aspdc_jax.training.sharding import replicate

    assert jax.device_count() == 8, jax.devices()
    deblur, reblur = model_from_config(dict(deblur_width=4, reblur_width=4, num_groups=1))
    params = init_params(deblur, jax.random.key(0), which="deblur")
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
