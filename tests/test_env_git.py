"""The git commit a run records for attnprof (env._git_sha): marked dirty when the tracked files differ from it, and
none when attnprof is not tracked in the repository around it."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

import attnprof.env

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def env_module_in(package: Path):
    """env.py loaded from `package` (a copy), so that its _git_sha looks at that folder's repository."""
    spec = importlib.util.spec_from_file_location("copied_env", package / "env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_edit_not_committed_is_recorded_as_dirty(tmp_path):
    """An edit, sweep, report loop recorded the clean commit for code that was not what got measured (a report audit)."""
    package = tmp_path / "repo" / "attnprof"
    package.mkdir(parents=True)
    shutil.copy(attnprof.env.__file__, package / "env.py")
    (package / "__init__.py").write_text("")
    repo = package.parent
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    module = env_module_in(package)
    head = git(repo, "rev-parse", "HEAD")
    assert module._git_sha() == head
    (package / "__init__.py").write_text("# an edit\n")
    edited = module._git_sha()
    assert edited.startswith(f"{head}-dirty-") and module._git_sha() == edited  # the same change, the same name
    (package / "__init__.py").write_text("# another edit\n")
    assert module._git_sha().startswith(f"{head}-dirty-") and module._git_sha() != edited  # other code again
    (package / "untracked.py").write_text("")  # a new file not added: the measured code may not import it
    (repo / "rules.toml").write_text("")
    git(repo, "add", "rules.toml")  # a file of the repository outside the package: no other code (a review)
    (package / "__init__.py").write_text("")
    assert module._git_sha() == head


def test_a_repository_that_does_not_track_attnprof_gives_no_commit(tmp_path):
    """An install inside a project's virtualenv (the project a git repository) recorded the project's commit."""
    repo = tmp_path / "project"
    package = repo / ".venv" / "site-packages" / "attnprof"
    package.mkdir(parents=True)
    shutil.copy(attnprof.env.__file__, package / "env.py")
    (package / "__init__.py").write_text("")
    (repo / "train.py").write_text("")
    git(repo, "init", "-q")
    git(repo, "add", "train.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    assert env_module_in(package)._git_sha() is None
