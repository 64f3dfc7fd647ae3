"""The Video-XL-2 model: official checkpoint layout (strict), and ingest + ask end to end on a tiny model."""

import json

import numpy as np
import pytest
import torch
from helpers import write_video, decoding
from PIL import Image
from safetensors.torch import load_file, save_file

from videoxl.pipeline import ingest
from videoxl.engine.prefill import PrefillConfig
from videoxl.model import TINY, CheckpointError, VideoXL2
from videoxl.video import VideoError


def test_checkpoint_round_trip_in_official_layout(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "llava_qwen" and config["mm_projector_type"] == "mlp2x_gelu"
    assert config["mm_hidden_size"] == 32 and config["mm_spatial_pool_stride"] == 2
    keys = set(load_file(tiny_checkpoint / "model.safetensors"))
    assert "lm_head.weight" in keys and "model.embed_tokens.weight" in keys and "model.norm.weight" in keys
    assert "model.sae.temporal_encoding" in keys
    assert "model.sae.encoder.1.relative_position_k.embeddings_table" in keys
    assert "model.sae.encoder.2.conv.weight" in keys and "model.mm_projector.2.bias" in keys
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight" in keys
    assert not any(".head." in k for k in keys)
    assert not any(k.startswith(("visual.", "llm.")) for k in keys)

    a = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    b = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    assert a.llm.model.rotary_emb.inv_freq.device.type == "cpu"
    half = VideoXL2.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16, device="cpu")
    assert half.dtype == torch.bfloat16


def test_sharded_save_loads_identically(tiny_checkpoint, tmp_path):
    model = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    model.save_pretrained(tmp_path / "sharded", max_shard_bytes=200_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    again = VideoXL2.from_pretrained(tmp_path / "sharded", device="cpu")
    for (name, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), name


def _rewrite(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors")
    return dst


def test_renamed_key_is_named_in_the_error(tiny_checkpoint, tmp_path):
    def rename(state):
        state["model.sae.time_encoding"] = state.pop("model.sae.temporal_encoding")

    bad = _rewrite(tiny_checkpoint, tmp_path / "renamed", rename)
    with pytest.raises(CheckpointError, match=r"missing keys: model\.sae\.temporal_encoding.*"
                                              r"unexpected keys: model\.sae\.time_encoding"):
        VideoXL2.from_pretrained(bad, device="cpu")


def test_wrong_shape_is_named_in_the_error(tiny_checkpoint, tmp_path):
    def reshape(state):
        state["model.mm_projector.0.weight"] = torch.zeros(64, 16)

    bad = _rewrite(tiny_checkpoint, tmp_path / "shape", reshape)
    with pytest.raises(CheckpointError, match=r"model\.mm_projector\.0\.weight has shape \[64, 16\], "
                                              r"the config expects \[64, 32\]"):
        VideoXL2.from_pretrained(bad, device="cpu")


def test_unused_text_mlp_of_the_release_is_tolerated(tiny_checkpoint, tmp_path):
    def add(state):
        state["model.text_mlp.0.weight"] = torch.zeros(64, 64)

    ok = _rewrite(tiny_checkpoint, tmp_path / "extra", add)
    VideoXL2.from_pretrained(ok, device="cpu")


def test_unreachable_hub_and_bad_paths_say_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="huggingface-cli download .* pass that folder"):
        VideoXL2.from_pretrained("BAAI/Video-XL-2-does-not-exist-here", device="cpu")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        VideoXL2.from_pretrained(tmp_path / "missing", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        VideoXL2.from_pretrained(tmp_path / "empty", device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, 150, fps=30, gop=15)  # 5 s
    return path


def test_ingest_and_ask_answer_like_a_dense_one_shot_reference(tiny_checkpoint, clip):
    model = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    calls = []
    model.visual.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    session = ingest(model, clip, max_frames=16, prefill_config=PrefillConfig(chunk=2, window=None))
    assert session.stats.frames == 16 and session.stats.groups == 4 and session.stats.chunks == 2
    # 5 s at 30 fps: 5 frames at 1 fps; 16 // 5 = 3 fps -> step 10 -> 15 frames (+1 pad); groups at 0, 40, 80, 120
    assert session.group_times == [0.0, 1.3, 2.7, 4.0]
    encoded = len(calls)

    question = "What colour is the square?"
    answer = session.ask(question, **decoding(max_new_tokens=6))
    again = session.ask(question, **decoding(max_new_tokens=6))
    assert len(calls) == encoded  # answering never re-encodes the video
    assert again.tokens == answer.tokens

    # the reference: the whole ChatML prompt with <|vision_pad|> slots filled, one forward, HF greedy decoding
    from videoxl.video import decode_frames, plan_frames, probe
    from videoxl.video.preprocess import preprocess

    info = probe(clip)
    plan = plan_frames(info.frame_times, max_frames=16)
    pixels = torch.stack([preprocess(f, TINY.vision.image_size) for f in decode_frames(info, plan.indices)])
    visual = model.encode(pixels)
    ids = model.prompt_ids(plan.group_times, question)
    text = model.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nTime 0.0s:")
    assert text.endswith("Time 4.0s:" + "<|vision_pad|>" * 4 + f"\n{question}<|im_end|>\n<|im_start|>assistant\n")
    with torch.no_grad():
        embeds = model.embed_prompt(ids, visual)
        out = model.llm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, ids.numel(), dtype=torch.long),
                                 max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    reference = out[0, -6:].tolist() if out.shape[1] > 6 else out[0].tolist()
    assert answer.tokens == reference[: len(answer.tokens)]


def test_ingest_streams_chunk_by_chunk(tiny_checkpoint, clip):
    model = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    events = []
    session = ingest(model, clip, max_frames=32, prefill_config=PrefillConfig(chunk=2, window=1, per_forward=1),
                           on_progress=lambda stage, done, total: events.append((stage, done)))
    # encoding of chunk k+1 happens after pre-fill of chunk k: never more than a chunk of frames at once
    # (19 frames at 4 fps, padded to 20: 5 groups in chunks of 2, 2, 1)
    assert events == [("encode", 8), ("prefill", 1), ("encode", 16), ("prefill", 2), ("encode", 20), ("prefill", 3)]
    # by default a forward takes window + 1 = 2 chunks: never more than those two chunks' frames at once
    events.clear()
    ingest(model, clip, max_frames=32, prefill_config=PrefillConfig(chunk=2, window=1),
                 on_progress=lambda stage, done, total: events.append((stage, done)))
    assert events == [("encode", 8), ("encode", 16), ("prefill", 1), ("prefill", 2), ("encode", 20), ("prefill", 3)]
    answer = session.ask("What colour is the square?", **decoding(topk=0, chunk=1, max_new_tokens=3))
    assert answer.chunks == 5 and answer.dense_chunks == [0, 4]
    assert answer.kv_bytes_used < answer.kv_bytes_dense


def test_images_and_frame_lists(tiny_checkpoint, tmp_path):
    model = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    image = tmp_path / "still.png"
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(image)
    session = ingest(model, image)
    assert session.group_times == [0.0] and session.stats.groups == 1  # "Time 0.0s:" as the published code
    prefix = model._prompt_prefix().numel()
    assert session.stats.tokens == prefix + model.timestamp_ids(0.0).numel() + TINY.tokens_per_group

    frames = [np.full((32, 32, 3), 10 * i, np.uint8) for i in range(6)]
    session = ingest(model, frames, frame_times=[0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert session.group_times == [0.0, 2.0]  # 6 frames padded to 8
    assert session.ask("What colour?", **decoding(max_new_tokens=2)).tokens


def test_bad_inputs(tiny_checkpoint, tmp_path):
    model = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoError, match="broken.mp4"):
        ingest(model, broken)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    with pytest.raises(VideoError, match="corrupt.png: not a readable image"):
        ingest(model, corrupt)
    session = ingest(model, [np.zeros((8, 8, 3), np.uint8)] * 4)
    with pytest.raises(ValueError, match="empty"):
        session.ask("   ")


def test_checkpoint_files_are_checked_without_torch(tiny_checkpoint, tmp_path):
    """videoxl.model.files refuses what loading would refuse, from the files alone: bytes past the data the
    safetensors header describes, a shard the index lists but the folder lacks; a whole checkpoint passes."""
    import json
    import shutil

    from videoxl.errors import CheckpointError
    from videoxl.model import files

    assert files.check(tiny_checkpoint) == tiny_checkpoint
    padded = tmp_path / "padded"
    shutil.copytree(tiny_checkpoint, padded)
    with open(padded / "model.safetensors", "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"padded/model.safetensors: not a valid safetensors file .*"
                                              r"the header describes \d+ bytes, the file has \d+"):
        files.check(padded)
    indexed = tmp_path / "indexed"
    shutil.copytree(tiny_checkpoint, indexed)
    (indexed / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "lm_head.weight": "model.safetensors", "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: weight shard listed in the index "
                                              "is missing"):
        files.check(indexed)
