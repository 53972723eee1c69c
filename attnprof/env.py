"""The environment a run was measured in: GPU, driver, CUDA, torch, Python, host, git sha.

Resume refuses to mix runs whose `resume_fields` differ: timings from another GPU, driver, torch build, CPU or
thread count, or by another attnprof, are not the same experiment.
"""

from __future__ import annotations

import platform
import socket
import subprocess
from pathlib import Path

COMPARABLE_FIELDS = ("gpu_name", "gpu_driver", "cuda_version", "torch_version")


def capture_env(devices: tuple[str, ...] = (), impl_names=None) -> dict:
    """The environment of a run on `devices` of the impls `impl_names` (default: every impl registered here)."""
    import torch

    import attnprof
    from attnprof import cpu_heap

    env = {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "attnprof_version": attnprof.__version__,
        "git_sha": _git_sha(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "host_memory_bytes": _host_memory_bytes(),
        "cpu_heap": cpu_heap.policy(),
        "gpu_name": None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpu_total_bytes": None,
        "gpu_driver": None,
        "plugins": list(_plugin_modules(impl_names)),  # a run of a plugin impl needs them to be resumed or reproduced
    }
    env["plugin_path"] = plugin_folders(env["plugins"])
    cuda_devices = [d for d in devices if d.startswith("cuda")]
    if cuda_devices and torch.cuda.is_available():
        from attnprof.trackers.nvml import cuda_index

        props = torch.cuda.get_device_properties(cuda_index(cuda_devices[0]))  # the GPU measured, not always GPU 0
        env.update(gpu_name=props.name, gpu_total_bytes=props.total_memory, gpu_driver=_nvml_driver())
    return env


def plugin_folders(modules) -> list[str]:
    """The folders the plugin `modules` were imported from that only PYTHONPATH or the current folder put on the path:
    a command the tool prints for the run (resume, retry, reproduce) needs them too. The README's own layout, a
    mykernels.py beside the user run with PYTHONPATH=., printed commands that failed "cannot import plugin module" from
    a fresh shell (a README audit). Absolute, so the commands work from any folder; an installed package's is left out."""
    import os
    import sys

    given = {os.path.realpath(p or os.curdir) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    given.add(os.path.realpath(os.curdir))
    folders = []
    for module in modules:
        top = sys.modules.get(module.split(".")[0])
        path = getattr(top, "__file__", None)
        if not path:
            continue
        folder = os.path.dirname(os.path.realpath(path))
        if os.path.basename(path) == "__init__.py":  # a package: the folder that holds it is the one on the path
            folder = os.path.dirname(folder)
        if folder in given and folder not in folders:
            folders.append(folder)
    return folders


def _plugin_modules(impl_names=None) -> tuple[str, ...]:
    """The modules of the non-built-in impls among `impl_names` (ATTNPROF_PLUGINS', or imported by a session)."""
    from attnprof import impls

    impls.names()  # load ATTNPROF_PLUGINS
    return impls.worker_modules(impl_names)


# The frontiers' budget where a run has no device memory (an accounting run belongs to no device): an 80 GiB GPU is
# the usual question. `fit`, the report and the dashboard's slider all start from it, and each says it is a default.
DEFAULT_BUDGET = 80 * 2**30
# An accounting run's frontiers said nothing in `fit`, then "none without a budget", while the report of the same run
# drew them at the dashboard's 80 GiB (a user audit).
DEFAULT_BUDGET_SAID = "a default: the run has no device memory (an accounting run belongs to no device); --budget sets it"


def memory_budget(env: dict, devices) -> int | None:
    """A run's default memory budget for its frontiers: its GPU's memory, else for CPU runs its host's (as
    recorded; runs from before that was recorded use this machine's); None for accounting runs (meta), which
    belong to no device. `fit`, `gate`, `report` and the dashboard all start from it."""
    if env.get("gpu_total_bytes"):
        return int(env["gpu_total_bytes"])
    if "cpu" in devices:
        return int(env.get("host_memory_bytes") or _host_memory_bytes())
    return None


def _host_memory_bytes() -> int:
    import psutil

    return psutil.virtual_memory().total


# What a time depends on beyond the code: a gate baseline keeps them (`timed_on`), and a time is compared only with one
# taken where they agree (a 3x slowdown at 1 thread passed against a baseline timed at 2, in a gate audit).
TIMING_FIELDS = ("cpu", "cpu_threads", "cpu_heap", "gpu_name", "torch_version")


def timing_setup(env: dict) -> dict:
    return {key: env.get(key) for key in TIMING_FIELDS}


def resume_fields(timed: bool) -> tuple[str, ...]:
    """What a resumed run must share with its first part: a resume after a commit to attnprof, or on another node's
    CPU, was accepted and the run read as one (a robustness audit). The CPU's fields only for a timed run: exact
    accounting does not depend on them."""
    return COMPARABLE_FIELDS + ("attnprof_version", "git_sha") + (("cpu", "cpu_threads", "cpu_heap") if timed else ())


def differing_fields(old: dict, new: dict, fields=COMPARABLE_FIELDS) -> list[str]:
    """`field: old -> new` for every one of `fields` that changed."""
    return [f"{key}: {old.get(key)} -> {new.get(key)}" for key in fields if old.get(key) != new.get(key)]


def _git_sha() -> str | None:
    """attnprof's commit, with "-dirty-<hash of the change>" when its package's tracked files differ from it: an edit,
    sweep, report loop recorded the clean commit for code that was not what got measured (a report audit). The package
    only (an edited scenario in the repository is no other code), and the change's hash (a second edit is other code
    again: a resume across it is refused). None unless the package is tracked there: an install in a project's
    virtualenv would record the project's commit."""
    import hashlib

    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, timeout=5)

    try:
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0 or not sha.stdout.strip() or git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        change = git("diff", "HEAD", "--", ".")  # the package's folder: paths are the working folder's
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = f"-dirty-{hashlib.sha1(change.stdout).hexdigest()[:8]}" if change.returncode == 0 and change.stdout.strip() else ""
    return sha.stdout.decode().strip() + dirty


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # any NVML failure only means the driver version is unknown
        return None
