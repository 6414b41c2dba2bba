import json

import numpy as np
import pytest
import torch

from echomimic_core.sampling.schedulers import SAMPLERS, make_scheduler, shift_sigmas, toy_velocity, verify_fixture


def test_fixture_matches_upstream(reference_dir):
    path = reference_dir / "samplers.safetensors"
    meta = json.loads((reference_dir / "samplers_meta.json").read_text())
    errors = verify_fixture(path, meta)
    assert len(errors) == 2 * len(meta["runs"])
    assert max(errors.values()) < 1e-5, {k: v for k, v in errors.items() if v >= 1e-5}


def test_dpm_double_shift_flag():
    twice = make_scheduler("Flow_DPM++", 8, 5.0, "preview")
    once = make_scheduler("Flow_DPM++", 8, 5.0, "preview", dpm_reapply_config_shift=False)
    base = np.linspace(1, 0, 9)[:8]
    np.testing.assert_array_equal(once.timesteps.numpy(), (shift_sigmas(base, 5.0) * 1000).astype(np.int64))
    np.testing.assert_array_equal(
        twice.timesteps.numpy(), (shift_sigmas(shift_sigmas(base, 5.0), 5.0) * 1000).astype(np.int64)
    )
    # flash forces the config shift to 1, so the flag changes nothing there
    flash = make_scheduler("Flow_DPM++", 8, 5.0, "flash")
    assert torch.equal(flash.timesteps, once.timesteps)


def test_euler_step_is_sigma_difference_times_velocity():
    sch = make_scheduler("Flow", 4, 5.0)
    x = torch.randn(1, 2, 1, 3, 3)
    v = torch.randn_like(x)
    out = sch.step(v, sch.timesteps[0], x)
    torch.testing.assert_close(out, x + (sch.sigmas[1] - sch.sigmas[0]) * v)


def test_dpm_first_and_last_step_formulas():
    sch = make_scheduler("Flow_DPM++", 3, 5.0, "flash")
    s = sch.sigmas.double()
    x = torch.randn(1, 2, 1, 3, 3)
    v = torch.randn_like(x)
    # first step: sigma_0 = 1, so the first-order update is sigma_1 * x + (1 - sigma_1) * x0_pred
    x0 = x - s[0].float() * v
    out = sch.step(v, sch.timesteps[0], x)
    torch.testing.assert_close(out, s[1].float() * x + (1 - s[1].float()) * x0, rtol=1e-5, atol=1e-6)
    sch.step(v, sch.timesteps[1], out)
    # last step lands on sigma = 0: the result is the data prediction itself
    last_x = torch.randn_like(x)
    final = sch.step(v, sch.timesteps[2], last_x)
    torch.testing.assert_close(final, last_x - sch.sigmas[2] * v)


@pytest.mark.parametrize("name", SAMPLERS)
def test_exact_straight_flow_is_recovered(name):
    # for x_t = (1 - s) x0 + s n the true velocity is n - x0 everywhere; any consistent solver lands on x0
    x0, noise = torch.randn(1, 2, 1, 4, 4), torch.randn(1, 2, 1, 4, 4)
    sch = make_scheduler(name, 6, 3.0, "flash")
    x = noise.clone() if name != "Flow_Unipc" else (1 - sch.sigmas[0]) * x0 + sch.sigmas[0] * noise
    for t in sch.timesteps:
        x = sch.step(noise - x0, t, x)
    torch.testing.assert_close(x, x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SAMPLERS)
def test_reset_makes_runs_repeatable_and_overrun_errors(name):
    sch = make_scheduler(name, 5, 5.0)
    c, x_init = torch.randn(1, 2, 1, 2, 2), torch.randn(1, 2, 1, 2, 2)

    def run():
        x = x_init.clone()
        for t in sch.timesteps:
            x = sch.step(toy_velocity(x, c, t), t, x)
        return x

    first = run()
    with pytest.raises(RuntimeError, match="reset"):
        sch.step(first, sch.timesteps[-1], first)
    sch.reset()
    assert torch.equal(run(), first)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("Euler", 5)
    with pytest.raises(ValueError, match="variant"):
        make_scheduler("Flow_Unipc", 5, variant="turbo")
