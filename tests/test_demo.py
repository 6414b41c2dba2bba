"""The tiny demo installation."""

import torch
from safetensors.torch import load_file

from echomimic_core.demo import write_demo_models


def test_writing_the_demo_files_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = write_demo_models(tmp_path / "a")
    assert torch.equal(torch.rand(3), expected)  # the caller's seeded stream continues untouched
    second = write_demo_models(tmp_path / "b", overwrite=True)
    a, b = load_file(str(first.transformer)), load_file(str(second.transformer))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # seeded: same weights
