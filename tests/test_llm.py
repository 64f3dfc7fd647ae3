"""The GGUF conversion of the offline LLM, against transformers' own GGUF loader on a tiny Llama written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from videoxl.llm import llama_from_gguf, read_gguf, tokenizer_from_gguf  # noqa: E402

HEADS, KV_HEADS, HIDDEN, FFN, LAYERS = 4, 2, 64, 96, 2
CORPUS = ["What colour is the square? The square is red.", "Time 12.5s: a moon, then a star over the sea.",
          "naïve café — 😀 tabs\tand  spaces"] * 20


def _write_tiny_llama(path):
    """A 2-layer Llama in GGUF as llama.cpp writes one: Q8_0, Q4_1 and F32 tensors, query and key rows permuted
    for its rotary kernel, a byte-level BPE vocabulary trained here with control tokens at the start."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(bpe.to_str())["model"]["merges"]]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")

    rng = np.random.default_rng(0)
    head_dim = HIDDEN // HEADS

    def permute(m, heads):  # llama.cpp's order: each head's rotary halves interleaved
        return m.reshape(heads, 2, m.shape[0] // heads // 2, m.shape[1]).swapaxes(1, 2).reshape(m.shape)

    def add(name, shape, kind, transform=None):
        m = rng.normal(0, 0.1, shape).astype(np.float32)
        m = transform(m) if transform else m
        if kind == "F32":
            w.add_tensor(name, m)
        else:  # the quantized bytes, (rows, bytes per row)
            q = gguf.GGMLQuantizationType[kind]
            w.add_tensor(name, gguf.quants.quantize(m, q), raw_dtype=q)

    add("token_embd.weight", (len(tokens), HIDDEN), "Q8_0")
    add("output_norm.weight", (HIDDEN,), "F32")
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", (HIDDEN,), "F32")
        add(f"blk.{i}.ffn_norm.weight", (HIDDEN,), "F32")
        add(f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN), "Q4_1", lambda m: permute(m, HEADS))
        add(f"blk.{i}.attn_k.weight", (KV_HEADS * head_dim, HIDDEN), "Q4_1", lambda m: permute(m, KV_HEADS))
        add(f"blk.{i}.attn_v.weight", (KV_HEADS * head_dim, HIDDEN), "Q8_0")
        add(f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN), "Q4_1")
        add(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), "Q4_1")
        add(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), "Q8_0")
        add(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), "Q4_1")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_conversion_equals_transformers_gguf_loader(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "tiny.gguf"
    _write_tiny_llama(path)
    meta, tensors = read_gguf(path)
    ours, tok = llama_from_gguf(meta, tensors), tokenizer_from_gguf(meta)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)

    a, b = ours.state_dict(), ref.state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for key in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert getattr(ours.config, key) == getattr(ref.config, key), key

    for text in [*CORPUS[:3], "<|im_start|>user\nunseen wörds 12345<|im_end|>", " a leading space", ""]:
        ids = tok(text)["input_ids"]
        assert ids == ref_tok(text)["input_ids"], text
        assert tok.decode(ids) == ref_tok.decode(ids) == text
    assert tok.all_special_ids == ref_tok.all_special_ids and tok.eos_token == ref_tok.eos_token == "<|im_end|>"
    chat = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(chat, tokenize=False) == ref_tok.apply_chat_template(chat, tokenize=False)

    ids = torch.tensor([tok("The square is red.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, ref(ids).logits)


def test_not_a_gguf_file_is_named(tmp_path):
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"PK\x03\x04 not gguf at all")
    with pytest.raises(ValueError, match="weights.gguf is not a GGUF file"):
        read_gguf(path)


def test_a_truncated_gguf_file_is_named(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama(path)
    whole = path.read_bytes()
    for cut in (40, len(whole) // 3, len(whole) - 100):  # in the metadata, in the tensor infos or data, at the end
        path.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match="tiny.gguf: a truncated or corrupt GGUF file"):
            read_gguf(path)
