"""The engine tests' tiny llama store and an engine over it."""

import pytest

from backend.engine.local_engine import create_engine
from backend.testmodels import write_model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_model("llama", root / "tiny.gguf", config={"max_position_embeddings": 256}, seed=1)
    return root


@pytest.fixture
def engine(models_dir):
    eng = create_engine(str(models_dir), num_parallel=4, default_keep_alive=60)
    yield eng
    eng.close()
