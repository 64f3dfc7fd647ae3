"""Shared test fixtures: tiny random LLMs and an independent dense-mask statement of the chunk pattern."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from videoxl.engine.layout import Group


def tiny_qwen2(seed: int = 0, layers: int = 2) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_theta=10000.0, attn_implementation="sdpa", tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=4096,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def random_groups(n_groups: int, hidden: int | None = None, vocab: int = 96, seed: int = 1,
                  ts_len=(2, 4), vis_len=(5, 11)) -> list[Group]:
    """Groups with varying timestamp and visual lengths; visual parts as embeddings when ``hidden`` is given."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for _ in range(n_groups):
        t = int(torch.randint(ts_len[0], ts_len[1] + 1, (1,), generator=g))
        v = int(torch.randint(vis_len[0], vis_len[1] + 1, (1,), generator=g))
        ts = torch.randint(0, vocab, (t,), generator=g)
        vis = torch.randn(v, hidden, generator=g) * 0.5 if hidden else torch.randint(0, vocab, (v,), generator=g)
        groups.append(Group(ts, vis))
    return groups


def reference_mask(prefix: int, groups: list[Group], chunk: int, window: int | None, timestamps: str,
                   question: int = 0) -> torch.Tensor:
    """The chunk attention pattern as one dense (L, L) boolean matrix, built rule by rule (Video-XL-2's ``get_sparse_attention_mask``)."""
    owner, is_ts = [-1] * prefix, [False] * prefix
    for g, group in enumerate(groups):
        owner += [g // chunk] * len(group)
        is_ts += [True] * group.timestamp.shape[0] + [False] * group.visual.shape[0]
    owner += [-2] * question  # the question after the video sees everything
    is_ts += [False] * question
    n = len(owner)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(i + 1):
            if owner[j] == -1 or owner[i] in (-1, -2):
                allowed[i, j] = True  # prefix columns; prefix and question rows
            elif is_ts[j]:
                allowed[i, j] = True  # timestamp columns are global
            elif is_ts[i] and timestamps == "global":
                allowed[i, j] = True  # timestamp rows see everything before them
            elif window is None or owner[i] - owner[j] <= window:
                allowed[i, j] = True  # own chunk and the window of previous chunks
    return allowed


def full_embeddings(model, prefix: torch.Tensor, groups: list[Group], question: torch.Tensor | None = None):
    table = model.get_input_embeddings()
    parts = [table(prefix)]
    for group in groups:
        for part in (group.timestamp, group.visual):
            parts.append(table(part) if part.dtype == torch.long else part.to(table.weight.dtype))
    if question is not None:
        parts.append(table(question))
    return torch.cat(parts)


def index_frame(i: int, size: int = 64):
    """A grey frame whose four horizontal bands carry the base-8 digits of its index (robust to lossy coding)."""
    import numpy as np

    frame = np.zeros((size, size, 3), np.uint8)
    band = size // 4
    for d in range(4):
        frame[d * band:(d + 1) * band] = 16 + 32 * (i // 8 ** d % 8)
    return frame


def frame_index(frame) -> int:
    """Read back the index written by :func:`index_frame`."""
    band = frame.shape[0] // 4
    digits = [frame[d * band + band // 4: d * band + 3 * band // 4].astype(float).mean() for d in range(4)]
    return sum(8 ** d * int(round((v - 16) / 32)) for d, v in enumerate(digits))


def write_video(path, n: int, fps: int = 30, times_ms: list[int] | None = None, codec: str = "mpeg4",
                gop: int = 12, size: int = 64) -> None:
    """A real video file of ``n`` index-coded frames; ``times_ms`` gives variable frame times (ms)."""
    import fractions

    import av

    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = gop
    stream.codec_context.options = {"qscale": "2"} if codec == "mpeg4" else {}
    if times_ms is not None:
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(index_frame(i, size), format="rgb24")
        if times_ms is not None:
            frame.pts = times_ms[i]
            frame.time_base = fractions.Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def write_audio(path, seconds: float = 1.0) -> None:
    """An audio-only file (a sine tone)."""
    import av
    import numpy as np

    container = av.open(str(path), "w")
    stream = container.add_stream("aac", rate=16000)
    t = np.arange(int(16000 * seconds)) / 16000
    samples = (np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32)
    for start in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def decoding(**options) -> dict:
    """``Decoder.answer``'s (and ``Session.ask``'s) keyword arguments from option names of ``Selection``,
    ``Generation`` and the internal ``Ablation``, mixed: every chunk dense over the pre-fill's own chunks, greedy,
    64 tokens, unless the options say otherwise (``topk`` or ``kv_budget`` select)."""
    from videoxl.engine.decode import DEFAULT, configure

    out = configure(**{"topk": None, "chunk": None, "max_new_tokens": 64, **options})
    if out["ablation"] == DEFAULT:
        del out["ablation"]  # Session.ask takes none: the product's scorer
    return out


def heads_of(model, tokenizer=None):
    """The retrieval-head finder a ``Session`` gives its decoder (found on first use, cached under
    ``$VIDEOXL_CACHE``), for tests that build a ``Decoder`` themselves."""
    from videoxl.engine.heads import retrieval_heads

    return lambda: retrieval_heads(model, tokenizer).heads


class Ran:
    """What a ``videoxl`` command run in this process printed, and its exit code (as subprocess.run's result)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def videoxl_here(capsys, *args) -> Ran:
    """The ``videoxl`` command in this process: the same parser and code as ``python -m videoxl.cli``, without a new
    interpreter importing torch (about 6 s a run) or the signal handlers. Tests of exit codes on signals, of what
    is imported, and the README's own command run the real process instead."""
    from videoxl.cli import run

    capsys.readouterr()  # what the test printed before
    code = run([str(a) for a in args])
    out = capsys.readouterr()
    return Ran(code, out.out, out.err)
