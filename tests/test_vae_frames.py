"""The VAE's frame arithmetic: 4k+1 lengths and latent counts, the one helper set everything uses."""

from echomimic_core.vae_frames import (
    VAE_TEMPORAL_STRIDE,
    latent_frames,
    pixel_frames,
    round_down_4k1,
    round_up_4k1,
)


def test_4k1_rounding():
    assert [round_up_4k1(n) for n in (0, 1, 2, 5, 6, 9, 113)] == [1, 1, 5, 5, 9, 9, 113]
    assert [round_down_4k1(n) for n in (0, 1, 4, 5, 8, 115, 116, 117)] == [0, 1, 1, 5, 5, 113, 113, 117]


def test_latent_and_pixel_frames_invert_each_other():
    assert VAE_TEMPORAL_STRIDE == 4
    assert [latent_frames(n) for n in (1, 5, 81, 113)] == [1, 2, 21, 29]
    assert all(pixel_frames(latent_frames(n)) == n for n in (1, 5, 81, 113))


def test_no_other_module_keeps_its_own_stride():
    """The stride and the 4k+1 helpers have one home: no module defines them again."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"^(?:TEMPORAL_\w*|\w*_TEMPORAL_\w*|def round_\w*4k1|def \w*vae_frames)\b", re.M)
    owners = [
        path.relative_to(root).as_posix()
        for folder in ("echomimic_core", "nodes", "training", "tools", "workflows")
        for path in (root / folder).rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert owners == ["echomimic_core/vae_frames.py"]
