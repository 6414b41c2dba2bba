import pytest
import torch

from echomimic_core.audio_alignment import frame_energy
from echomimic_core.long_video import (
    Chunk,
    Stitcher,
    Window,
    blend_into,
    most_chunks_at_pauses,
    plan_chunks,
    plan_chunks_at_pauses,
    plan_windows,
    sliding_velocity,
    window_conditioning,
    window_weights,
)


def test_single_chunk_rounds_up_and_is_trimmed_later():
    assert plan_chunks(50, 113, 8) == [Chunk(0, 53, 0)]


@pytest.mark.parametrize("frames", [114, 200, 217, 218, 250, 1000])
def test_chunks_cover_every_frame_for_uneven_lengths(frames):
    chunks = plan_chunks(frames, 113, 8)
    assert chunks[0].start == 0 and chunks[0].overlap == 0
    for prev, nxt in zip(chunks, chunks[1:]):
        # each chunk starts `overlap` frames before the previous one ends
        assert nxt.start == prev.start + prev.length - 8 and nxt.overlap == 8
    assert all((c.length - 1) % 4 == 0 for c in chunks)
    assert chunks[-1].start + chunks[-1].length >= frames
    assert chunks[-1].start + chunks[-1].length - frames < 4  # never more than 3 padded frames


def test_chunk_arguments_are_checked():
    with pytest.raises(ValueError, match="overlap_video_length"):
        plan_chunks(300, 33, 33)
    with pytest.raises(ValueError, match="partial_video_length"):
        plan_chunks(300, 3, 0)
    with pytest.raises(ValueError, match="at least 1 frame"):
        plan_chunks(0, 113, 8)


def test_blend_is_linear_over_the_overlap():
    prev = torch.zeros(10, 2, 2, 3)
    new = torch.ones(7, 2, 2, 3)
    out = blend_into(prev, new, 4)
    assert out.shape[0] == 10 + 7 - 4
    torch.testing.assert_close(out[6:10, 0, 0, 0], torch.tensor([0, 1 / 3, 2 / 3, 1.0]))
    assert out[:6].abs().sum() == 0 and (out[10:] == 1).all()


def test_windows_and_weights_partition_unity():
    windows = plan_windows(30, 12, 4)
    assert windows[0] == Window(0, 12) and windows[-1].start + windows[-1].length == 30
    weights = window_weights(windows, 4)
    total = torch.zeros(30)
    for w, wt in zip(windows, weights):
        total[w.start : w.start + w.length] += wt
    torch.testing.assert_close(total, torch.ones(30))


def test_sliding_velocity_of_a_windowed_constant_field_is_that_field():
    # a velocity that only depends on absolute frame position must come out unchanged
    field = torch.randn(1, 2, 21, 3, 3)

    def window_velocity(w, lat, t, step):
        assert lat.shape[2] == w.length
        return field[:, :, w.start : w.start + w.length]

    v = sliding_velocity(window_velocity, 21, 8, 3)(torch.zeros(1, 2, 21, 3, 3), torch.tensor([500.0]), 0)
    torch.testing.assert_close(v, field)


def _y(kept_latent_frames, frames=9):
    """y [1, 20, frames, 2, 2]: mask channels 1 on the kept latent frames, latents = frame index."""
    y = torch.zeros(1, 20, frames, 2, 2)
    y[:, 4:] = torch.arange(frames, dtype=torch.float32).view(1, 1, -1, 1, 1)
    for f in kept_latent_frames:
        y[:, :4, f] = 1
    return y


def test_window_conditioning_anchors_leading_frames_and_keeps_later_ones_in_place():
    windows = plan_windows(9, 5, 1)  # [0, 5), [4, 9)
    # the reference (or continuation frames) only: every window opens with them, as upstream
    for kept in ([0], [0, 1]):
        y = _y(kept)
        assert all(torch.equal(window_conditioning(y, w), y[:, :, :5]) for w in windows)
    # an end frame, keyframes, a source video throughout: each window its own frames
    for kept in ([0, 8], [3, 6], range(9)):
        y = _y(kept)
        last = window_conditioning(y, windows[1])
        assert torch.equal(last, y[:, :, 4:9])
    assert (window_conditioning(_y([0, 8]), windows[1])[:, :4, -1] == 1).all()  # first_last's end is seen
    nothing = _y([])
    assert torch.equal(window_conditioning(nothing, windows[1]), nothing[:, :, :5])


def _blend_all(chunks, outputs, num_frames):
    """The in-memory stitching the Stitcher replaces: grow the whole video chunk by chunk."""
    video = None
    for chunk, frames in zip(chunks, outputs):
        video = blend_into(video, frames, chunk.overlap)
    return video[:num_frames]


@pytest.mark.parametrize("frames,partial,overlap", [(130, 65, 5), (30, 9, 4), (9, 9, 4), (200, 33, 8)])
def test_stitcher_hands_out_the_in_memory_video_holding_only_the_overlap(frames, partial, overlap):
    chunks = plan_chunks(frames, partial, overlap)
    g = torch.Generator().manual_seed(0)
    outputs = [torch.rand(c.length, 2, 2, 3, generator=g) for c in chunks]
    stitcher = Stitcher(chunks, frames)
    pieces = []
    for i, out in enumerate(outputs):
        if i:  # each chunk is conditioned on the frames it will blend over
            assert torch.equal(stitcher.start_frames(i), _blend_all(chunks[:i], outputs[:i], 10**6)[-overlap:])
        pieces.append(stitcher.add(i, out))
        assert stitcher.held is None if i + 1 == len(chunks) else len(stitcher.held) == chunks[i + 1].overlap
    assert torch.equal(torch.cat(pieces), _blend_all(chunks, outputs, frames))
    with pytest.raises(ValueError, match="in order"):
        stitcher.add(0, outputs[0])


def test_stitcher_state_restores_a_run_midway():
    chunks = plan_chunks(60, 17, 4)
    outputs = [torch.rand(c.length, 1, 1, 3) for c in chunks]
    first = Stitcher(chunks, 60)
    pieces = [first.add(0, outputs[0]), first.add(1, outputs[1])]
    second = Stitcher(chunks, 60)
    second.restore(first.state())
    pieces += [second.add(i, outputs[i]) for i in range(2, len(chunks))]
    assert torch.equal(torch.cat(pieces), _blend_all(chunks, outputs, 60))


def test_seams_move_into_pauses_within_the_search_window():
    fps, num_frames = 25, 400
    t = torch.arange(num_frames * 640) / 16000
    speech = 0.5 * torch.sin(2 * torch.pi * 200 * t)
    pauses = [(95, 107), (190, 203), (290, 302)]  # frames where the speaker is silent
    for a, b in pauses:
        speech[a * 640 : b * 640] = 0
    energy = frame_energy(speech, num_frames, fps)
    assert energy[100] == 0 and energy[50] > 0.3
    fixed = plan_chunks(num_frames, 113, 8)
    moved = plan_chunks_at_pauses(num_frames, 113, 8, energy, search_frames=16)
    for prev, nxt in zip(moved, moved[1:]):
        assert nxt.start == prev.start + prev.length - 8 and (prev.length - 1) % 4 == 0
        assert 113 - 16 <= prev.length <= 113
        seam = range(nxt.start, nxt.start + 8)  # the frames two chunks blend over
        assert any(a <= seam[0] and seam[-1] < b for a, b in pauses), (prev, nxt)
    # fixed seams would have cut through speech
    assert any(energy[c.start : c.start + 8].mean() > 0.1 for c in fixed[1:])
    assert moved[-1].start + moved[-1].length >= num_frames


def test_seams_in_speech_without_pauses_stay_at_the_longest_chunk():
    energy = torch.ones(300)
    assert plan_chunks_at_pauses(300, 113, 8, energy, search_frames=16) == plan_chunks(300, 113, 8)
    assert plan_chunks_at_pauses(300, 113, 8, energy, search_frames=0) == plan_chunks(300, 113, 8)


@pytest.mark.parametrize("partial,overlap,search", [(33, 4, 12), (113, 8, 16), (81, 8, 12), (49, 16, 40), (33, 4, 0)])
def test_most_chunks_bounds_the_seam_search_for_any_audio(partial, overlap, search):
    generator = torch.Generator().manual_seed(0)
    for frames in range(1, 400, 13):
        most = most_chunks_at_pauses(frames, partial, overlap, search)
        assert len(plan_chunks(frames, partial, overlap)) <= most
        for _ in range(5):
            energy = torch.rand(frames, generator=generator)
            assert len(plan_chunks_at_pauses(frames, partial, overlap, energy, search)) <= most
        # louder towards each chunk's end: every seam takes the shortest chunk, and the bound is reached
        rising = torch.arange(frames, dtype=torch.float32)
        assert len(plan_chunks_at_pauses(frames, partial, overlap, rising, search)) == most


def test_most_chunks_of_the_demo_clip():
    # 2.4 s at 25 fps in 33-frame chunks sharing 4: 2 at fixed seams, 3 if every seam moves 12 earlier
    assert len(plan_chunks(60, 33, 4)) == 2
    assert most_chunks_at_pauses(60, 33, 4, 12) == 3
    with pytest.raises(ValueError, match="overlap_video_length must be in"):
        most_chunks_at_pauses(60, 33, 33, 12)
