"""Fixtures for the service tests: a tiny generated dataset, a context per test, a trained project.

Every database test runs on SQLite and, when ``KENSA_TEST_POSTGRES_URL`` is set, on PostgreSQL
(``db_kind`` from tests/db: skipped with a visible reason without the variable, a failure under
CI). One migrated database per module and kind, emptied before each test; each test gets its
own ``KENSA_HOME``. Images are 96 px and the model works at 96 px, so a training takes seconds.

Torch runs single-threaded here (and in the worker processes the tests start): on a small
shared machine two OpenMP threads per process wait on each other and one 96 px forward pass
goes from ~20 ms to over a second.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from db.session import make_engine
from db.testing import make_migrated_database, reset_database
from services.context import Kensa
from services.data.projects import create_project
from tests.db.conftest import db_kind  # noqa: F401 - the sqlite/postgres parametrisation
from tests.synthetic import make_mvtec, texture, write_png

#: Small and fast: 96 px images scored at 96 px (a 12 x 12 feature grid). The bank limit is
#: the one these tests were written against: SHOTS shots x 8 views x 144 patches plus a few
#: learned images stay under it, so a bank update only grows the bank (the history tests
#: reason about that); the default (5,000) would re-select a coreset after two updates.
PARAMS: dict[str, Any] = {"image_size": 96, "max_bank": 10_000}
SHOTS = 4
PROJECT = "widgets"


@pytest.fixture(scope="session", autouse=True)
def single_threaded_torch() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # for the worker processes
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_local_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Submitted jobs wait for the workers a test starts itself, never for one spawned on the
    side (it would outlive the test and take jobs meant for the test's own workers)."""
    monkeypatch.setenv("KENSA_LOCAL_WORKER", "0")


@pytest.fixture(scope="session")
def dataset_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 good training images, 3 good and 3 defect test images with masks (MVTec layout)."""
    return make_mvtec(tmp_path_factory.mktemp("template") / "widgets",
                      n_train=6, n_test_good=3, n_defect=3, size=96, seed=0)


@pytest.fixture
def dataset(dataset_template: Path, tmp_path: Path) -> Path:
    """A private copy: tests may add, break or delete files in it."""
    return Path(shutil.copytree(dataset_template, tmp_path / "data" / "widgets"))


@pytest.fixture
def new_goods(tmp_path: Path) -> Callable[[int, int], Path]:
    """``new_goods(n, seed)``: a folder of ``n`` fresh good images (not in the dataset)."""

    def make(n: int = 2, seed: int = 100) -> Path:
        rng = np.random.default_rng(seed)
        folder = tmp_path / f"new_goods_{seed}"
        for i in range(n):
            write_png(folder / f"new_{i:02d}.png", texture(rng, 96))
        return folder

    return make


@pytest.fixture(scope="module")
def services_db_url(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    with make_migrated_database(db_kind, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def ctx(services_db_url: str, tmp_path: Path) -> Iterator[Kensa]:
    """A context on an emptied database and a fresh KENSA_HOME."""
    engine = make_engine(services_db_url)
    reset_database(engine)
    engine.dispose()
    context = Kensa.create(tmp_path / "home", services_db_url, migrate=False)
    yield context
    context.close()


@pytest.fixture
def project(ctx: Kensa, dataset: Path) -> str:
    create_project(ctx, PROJECT, dataset)
    return PROJECT


@pytest.fixture
def trained(ctx: Kensa, project: str) -> dict[str, Any]:
    """The project after one in-process training (its model version row as a dict)."""
    from services.training.project import train_project

    return train_project(ctx, project, shots=SHOTS, seed=0, params=PARAMS)


@pytest.fixture
def home(ctx: Kensa, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The context's data directory, also in the environment (for code that builds its own)."""
    monkeypatch.setenv("KENSA_HOME", str(ctx.home))
    monkeypatch.setenv("DATABASE_URL", ctx.database_url)
    monkeypatch.setenv("KENSA_DEMO", "0")
    return ctx.home


@pytest.fixture
def make_project(ctx: Kensa, tmp_path: Path) -> Callable[..., Path]:
    """``make_project(name, n_train=..., ...)``: a generated MVTec folder imported as a project."""

    def make(name: str = "widgets", **sizes: int) -> Path:
        root = make_mvtec(tmp_path / "data" / name, **sizes)
        create_project(ctx, name, root)
        return root

    return make
