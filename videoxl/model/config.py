"""Model configuration: frozen dataclasses, the official config.json mapping, and named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from transformers import Qwen2Config

SIGLIP_SO400M = "google/siglip-so400m-patch14-384"


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower (its last encoder layer already dropped) and the token grid DTS works on."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 26  # SigLIP-SO400M has 27; Video-XL-2 deletes the last one
    num_heads: int = 16
    image_size: int = 384
    patch_size: int = 14
    grid: int = 24  # the 27x27 patch grid is resized bilinearly to grid x grid
    layer_norm_eps: float = 1e-6

    @property
    def patch_grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class LLMConfig:
    """The Qwen2 language model."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False

    def to_qwen2(self) -> Qwen2Config:
        return Qwen2Config(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings, tie_word_embeddings=self.tie_word_embeddings,
            use_sliding_window=False, attn_implementation="sdpa")


@dataclass(frozen=True)
class VideoXL2Config:
    """A Video-XL-2 model: vision tower, DTS (on the vision width), mlp2x_gelu projector, pooling, Qwen2 LLM."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    pool_stride: int = 2  # average pooling of the projected grid (after the projector)
    dts_max_relative: int = 64
    system_prompt: str = "You are a helpful assistant."
    profile: str = "published"  # the decoding defaults it gets (videoxl.decoding.PROFILES)

    def __post_init__(self):
        from ..decoding import PROFILES

        if self.profile not in PROFILES:
            raise ValueError(f"unknown decoding profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        v = self.vision
        if v.hidden_size % 32:
            raise ValueError(f"vision hidden_size must be a multiple of 32 (DTS GroupNorm), got {v.hidden_size}")
        if v.grid % self.pool_stride:
            raise ValueError(f"grid {v.grid} is not divisible by pool_stride {self.pool_stride}")

    @property
    def tokens_per_group(self) -> int:
        return (self.vision.grid // self.pool_stride) ** 2

    def to_dict(self) -> dict:
        """config.json in the official layout (Qwen2 fields at the top, mm_* fields), plus our vision_config."""
        q = self.llm
        return {
            "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
            "vocab_size": q.vocab_size, "hidden_size": q.hidden_size, "intermediate_size": q.intermediate_size,
            "num_hidden_layers": q.num_layers, "num_attention_heads": q.num_heads,
            "num_key_value_heads": q.num_kv_heads, "rope_theta": q.rope_theta, "rms_norm_eps": q.rms_norm_eps,
            "max_position_embeddings": q.max_position_embeddings, "tie_word_embeddings": q.tie_word_embeddings,
            "hidden_act": "silu", "use_sliding_window": False,
            "mm_vision_tower": SIGLIP_SO400M, "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": self.vision.hidden_size, "mm_spatial_pool_stride": self.pool_stride,
            "mm_spatial_pool_mode": "average", "mm_resampler_type": "spatial_pool", "mm_patch_merge_type": "unires",
            "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
            "vision_config": asdict(self.vision),
            "videoxl": {"dts_max_relative": self.dts_max_relative, "system_prompt": self.system_prompt,
                        "profile": self.profile},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "VideoXL2Config":
        """Read an official (or our) config.json. Without vision_config, the SigLIP-SO400M sizes are assumed."""
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if key not in d:
                raise ValueError(f"config.json lacks {key!r}: not a Video-XL-2 (llava_qwen) config")
        if d.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
            raise ValueError(f"mm_projector_type {d['mm_projector_type']!r} is not supported (mlp2x_gelu only)")
        if d.get("mm_spatial_pool_mode", "average") != "average":
            raise ValueError(f"mm_spatial_pool_mode {d['mm_spatial_pool_mode']!r} is not supported (average only)")
        llm = LLMConfig(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d.get("intermediate_size", 4 * d["hidden_size"]), num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"], num_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
            rope_theta=float(d.get("rope_theta", 1e6)), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)))
        vision = VisionConfig(**d["vision_config"]) if "vision_config" in d else VisionConfig(
            hidden_size=d.get("mm_hidden_size", 1152))
        extra = d.get("videoxl", {})
        return cls(vision=vision, llm=llm, pool_stride=d.get("mm_spatial_pool_stride", 2),
                   dts_max_relative=extra.get("dts_max_relative", 64),
                   system_prompt=extra.get("system_prompt", "You are a helpful assistant."),
                   profile=extra.get("profile", "published"))


# The released Video-XL-2 (SigLIP-SO400M minus its last layer, DTS at 1152, Qwen2.5-7B-Instruct).
VIDEO_XL_2 = VideoXL2Config()

# A tiny configuration for tests: every component present, widths 32-64.
TINY = VideoXL2Config(
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=28,
                        patch_size=7, grid=4),
    llm=LLMConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  rope_theta=10000.0, max_position_embeddings=32768),
)

# The default model shipped with the package: trained from scratch on the synthetic world (videoxl.synth) on a
# CPU. 64x64 frames, patch 8 -> an 8x8 grid -> 16 tokens per 4-frame group.
SYNTH = VideoXL2Config(
    vision=VisionConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, image_size=64,
                        patch_size=8, grid=8),
    llm=LLMConfig(vocab_size=640, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                  num_kv_heads=2, rope_theta=100000.0, max_position_embeddings=131072),
    profile="videoxl",
)

PRESETS = {"video-xl-2": VIDEO_XL_2, "tiny": TINY, "synth": SYNTH}


def preset(name: str, **changes) -> VideoXL2Config:
    """A named configuration, optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes)
