"""Video input on real files made here: constant and variable frame rate, seeking, and broken inputs."""

import numpy as np
import pytest
from helpers import frame_index, write_audio, write_video

from videoxl.video import VideoError, decode_frames, plan_frames, probe


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "cfr.mp4", 300, fps=30, gop=30)
    write_video(root / "x264.mp4", 90, fps=30, codec="libx264", gop=25)  # B-frames: decode order != display order
    times = [0]
    for i in range(1, 60):
        times.append(times[-1] + (40 if i % 3 else 300))  # bursts and gaps
    write_video(root / "vfr.mkv", 60, times_ms=times)
    return root, times


def test_constant_frame_rate_probe_and_decode(videos):
    root, _ = videos
    info = probe(root / "cfr.mp4")
    assert info.frames == 300
    assert info.frame_times[:3] == pytest.approx([0, 1 / 30, 2 / 30])
    assert (info.width, info.height) == (64, 64)
    plan = plan_frames(info.frame_times, max_frames=64)
    frames = list(decode_frames(info, plan.indices))
    assert [frame_index(f) for f in frames] == plan.indices
    assert frames[0].shape == (64, 64, 3)


def test_sparse_sampling_seeks_and_dense_sampling_reads_through_agree(videos):
    root, _ = videos
    for name in ("cfr.mp4", "x264.mp4"):
        info = probe(root / name)
        picks = [1, 2, 40, 41, 75, 89 % info.frames, info.frames - 1]
        picks = sorted(set(picks))
        assert [frame_index(f) for f in decode_frames(info, picks)] == picks
        every = list(range(info.frames))
        assert [frame_index(f) for f in decode_frames(info, every)] == every


def test_repeated_indices_yield_the_same_frame(videos):
    root, _ = videos
    info = probe(root / "cfr.mp4")
    assert [frame_index(f) for f in decode_frames(info, [5, 5, 5, 9])] == [5, 5, 5, 9]


def test_variable_frame_rate_uses_real_timestamps(videos):
    root, times = videos
    info = probe(root / "vfr.mkv")
    assert info.frames == 60
    assert info.frame_times == pytest.approx([t / 1000 for t in times], abs=1e-6)
    plan = plan_frames(info.frame_times, fps=1, max_fps=None, max_frames=512)
    frames = list(decode_frames(info, plan.indices))
    assert [frame_index(f) for f in frames] == plan.indices
    # each group's timestamp is its first frame's true presentation time, not index / fps
    for g, t in enumerate(plan.group_times):
        assert t == round(times[plan.indices[4 * g]] / 1000, 1)


def test_truncated_file_is_a_clear_error(videos, tmp_path):
    root, _ = videos
    data = (root / "cfr.mp4").read_bytes()
    broken = tmp_path / "truncated.mp4"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError, match="truncated.mp4"):
        info = probe(broken)
        list(decode_frames(info, list(range(info.frames))))


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(VideoError, match="noise.mp4: not a readable video"):
        probe(bad)


def test_zero_length_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        probe(empty)


def test_audio_only_file(tmp_path):
    audio = tmp_path / "tone.m4a"
    write_audio(audio)
    with pytest.raises(VideoError, match="no video stream .*audio"):
        probe(audio)


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "nope.mp4")


@pytest.mark.parametrize("rotation, corner", [(-90, "top-right"), (90, "bottom-left"), (180, "bottom-right"),
                                              (0, "top-left")])
def test_rotation_tag_is_applied_like_ffmpeg_autorotate(tmp_path, rotation, corner):
    """A phone video stores frames sideways with a display matrix; decoding turns them upright. The expected
    corners are what `ffmpeg -i FILE` (autorotate on) gives for these files (checked with FFmpeg 5.1)."""
    import av

    path = tmp_path / "phone.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=4)
    stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
    stream.set_display_rotation(rotation)  # the display matrix, as phones write it
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:16, :32] = 255  # white top-left quarter in the stored (sideways) frame
    for _ in range(8):
        for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()

    frame = next(decode_frames(probe(path), [0]))
    assert frame.shape == ((64, 32, 3) if rotation in (90, -90) else (32, 64, 3))
    h, w = frame.shape[0] // 2, frame.shape[1] // 2
    quarters = {"top-left": frame[:h, :w], "top-right": frame[:h, w:], "bottom-left": frame[h:, :w],
                "bottom-right": frame[h:, w:]}
    assert max(quarters, key=lambda k: quarters[k].mean()) == corner
    assert quarters[corner].mean() > 200 and all(q.mean() < 40 for k, q in quarters.items() if k != corner)


@pytest.fixture(scope="module")
def bframes(tmp_path_factory):
    """150 frames of FFmpeg's moving ``testsrc2`` in H.264 with B-frames (some of them references, b-pyramid),
    a keyframe every 40 frames; and every frame's RGB pixels by presentation time from a plain PyAV decode of
    the whole file (no skipping), the reference the reader's frames must equal."""
    import av

    path = tmp_path_factory.mktemp("bframes") / "bframes.mp4"
    graph = av.filter.Graph()
    source = graph.add("testsrc2", "size=160x96:rate=30:duration=5")
    sink = graph.add("buffersink")
    source.link_to(sink)
    graph.configure()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.options = {"x264-params": "keyint=40:min-keyint=40:scenecut=0:bframes=3:b-pyramid=normal"}
        while True:
            try:
                frame = graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.pict_type = None, av.video.frame.PictureType.NONE  # testsrc2 marks every frame I
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as c:
        reference = {f.pts: f.to_ndarray(format="rgb24") for f in c.decode(video=0)}
    return path, reference


def test_bframes_fixture_has_unreferenced_frames(bframes):
    import av

    path, reference = bframes
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        kept = sum(1 for _ in c.decode(stream))
    assert len(reference) == 150 and 40 < kept < 130  # I/P frames and reference B-frames remain


@pytest.mark.parametrize("picks", [range(0, 150, 8), range(1, 150, 2), range(150), [3, 50, 51, 52, 120, 149],
                                   [0, 7, 7, 7, 9, 41, 41, 149, 149]],
                         ids=["every-8th", "odd", "every", "sparse-seeks", "repeats"])
def test_skipping_unreferenced_frames_returns_the_frames_of_a_full_decode(bframes, picks, monkeypatch, caplog):
    """The frames between samples that nothing references are skipped (the decoder is told so for some packets),
    and every returned frame is the requested one, pixel for pixel, as a full decode gives it."""
    from videoxl.video import reader

    path, reference = bframes
    info = probe(path)
    picks = list(picks)
    told = []
    discard = reader._discard
    monkeypatch.setattr(reader, "_discard", lambda packet, wanted: told.append(discard(packet, wanted)) or told[-1])
    with caplog.at_level("INFO", logger="videoxl.video.reader"):
        skipped = list(decode_frames(info, picks))
    plain = list(decode_frames(info, picks, skip_unused=False))
    assert caplog.records == []  # no wanted frame went missing, so no fallback to a full decode
    if len(set(picks)) < 150:
        assert "NONREF" in told
    assert len(skipped) == len(plain) == len(picks)
    for i, a, b in zip(picks, skipped, plain):
        assert np.array_equal(a, reference[info.pts[i]]) and np.array_equal(b, reference[info.pts[i]]), i


def test_a_wanted_frame_lost_to_skipping_is_decoded_again_without_skipping(bframes, monkeypatch, caplog):
    """If a decoder dropped a wanted frame (here: told to skip every unreferenced frame, wanted or not), the reader
    decodes that stretch again with nothing skipped, and returns the right frames."""
    from videoxl.video import reader

    path, reference = bframes
    info = probe(path)
    monkeypatch.setattr(reader, "_discard", lambda packet, wanted: "NONREF" if packet.size else "DEFAULT")
    picks = list(range(0, 150, 3))
    with caplog.at_level("INFO", logger="videoxl.video.reader"):
        frames = list(decode_frames(info, picks))
    assert any("missing while skipping" in r.getMessage() for r in caplog.records)
    for i, frame in zip(picks, frames, strict=True):
        assert np.array_equal(frame, reference[info.pts[i]]), i


def test_frames_past_the_last_whole_group_are_dropped_as_the_published_harness(videos):
    """300 frames at 30 fps (10 s), sampled as every published run: 1 fps gives 10 frames, so 4 fps is allowed
    (256 // 10 = 25 >= 4): step round(30 / 4) = 8, frames 0, 8, ..., 296 (38 frames). The published ``load_video``
    keeps 36 (0..280); the model's own rule pads the 38 to 40 with the last frame."""
    from videoxl.eval.benchmarks import sampling
    from videoxl.eval.tasks import TASKS

    root, _ = videos
    info = probe(root / "cfr.mp4")
    drop = plan_frames(info.frame_times, 1, 4, 256, native_fps=info.native_fps, remainder="drop")
    assert drop.indices == [8 * k for k in range(36)] and drop.groups == 9
    pad = plan_frames(info.frame_times, 1, 4, 256, native_fps=info.native_fps)
    assert pad.indices == [8 * k for k in range(38)] + [296, 296] and pad.groups == 10
    for task in ("mlvu", "videomme", "lvbench"):  # the eval samples as the published harness, in every mode
        assert sampling(TASKS[task], str(root / "cfr.mp4"), TASKS[task].settings.max_frames)[1].indices == drop.indices
    few = plan_frames([0.0, 1.0, 2.0], 1, None, 256, remainder="drop")  # fewer than 4: still one (padded) group
    assert few.indices == [0, 1, 2, 2]


def test_native_rate_is_the_containers_average_rate(tmp_path):
    """The published harness steps through a video at decord's ``get_avg_fps``: the container's average rate."""
    from fractions import Fraction

    from videoxl.video import VideoInfo

    write_video(tmp_path / "ntsc.mp4", 61, fps=Fraction(30000, 1001), codec="libx264")
    ntsc = probe(tmp_path / "ntsc.mp4")
    assert ntsc.native_fps == 30000 / 1001 and ntsc.average_rate == 30000 / 1001
    assert (ntsc.frames - 1) / ntsc.duration != 30000 / 1001  # the estimate from frame times is not it, bit for bit
    # variable frame rate: 30 frames 40 ms apart, then 30 frames 20 ms apart. The MP4's average rate is 60 frames
    # over the track's duration (1000/31 = 32.26 fps); the frame times give 59 / 1.78 s = 33.15 fps. At 1 fps the
    # step is round(32.26) = 32, not 33
    times = [40 * k for k in range(30)] + [1200 + 20 * k for k in range(30)]
    write_video(tmp_path / "vfr.mp4", 60, fps=25, times_ms=times, codec="libx264")
    vfr = probe(tmp_path / "vfr.mp4")
    assert vfr.native_fps == pytest.approx(1000 / 31) and round((vfr.frames - 1) / vfr.duration) == 33
    assert plan_frames(vfr.frame_times, 1, None, 512, native_fps=vfr.native_fps).indices[:2] == [0, 32]
    # a container without an average rate: the estimate from the frame times
    bare = VideoInfo(vfr.path, vfr.pts, vfr.time_base, vfr.keyframes, vfr.width, vfr.height)
    assert bare.average_rate is None and bare.native_fps == (vfr.frames - 1) / vfr.duration
