import pytest
import seeding

from attnprof.dashboard.data import numeric_frame
from attnprof.export import measurements_frame


def pytest_configure(config):
    # dash 4 announces that dash_table will leave the built-in components one day; it is still the built-in table.
    config.addinivalue_line("filterwarnings", "ignore:\\s*The dash_table.DataTable will be removed:DeprecationWarning")


@pytest.fixture(scope="session")
def two_runs_db(tmp_path_factory):
    """A real SQLite file with the base and candidate runs (read-only for the tests that share it)."""
    path = tmp_path_factory.mktemp("dashboard") / "two-runs.db"
    seeding.seed_two_runs(path)
    return path


@pytest.fixture
def base_frame():
    """The base run as the export frame, built without a database (for the pure figure and view tests)."""
    return numeric_frame(measurements_frame(seeding.BASE, seeding.run_cells()))


@pytest.fixture
def candidate_frame():
    return numeric_frame(measurements_frame(seeding.CANDIDATE, seeding.run_cells(candidate=True)))
