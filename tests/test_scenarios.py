"""The scenario files under version control parse into the sweeps they describe."""

from pathlib import Path

import pytest

from attnprof.scenario import scenario_options, sweep_from_options

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.name)
def test_every_scenario_and_rules_file_parses(path):
    from attnprof.gating import check_rules_are_swept, load_rules

    if "[[rule]]" in path.read_text():
        rules, sweeps = load_rules(path)  # validates every sweep value, rule key and impl name
        assert rules and sweeps
        check_rules_are_swept(rules, [sweep_from_options(s) for s in sweeps], path)  # raises if a rule names an unmeasured impl
    else:
        assert sweep_from_options(scenario_options(path)).impls


def test_quick_is_cpu_sized_and_default_is_the_gpu_grid():
    quick = sweep_from_options(scenario_options(SCENARIOS / "quick.toml"))
    assert quick.device == ("cpu",) and quick.lengths[-1] == 4096 and quick.dtype == ("float32",)
    default = sweep_from_options(scenario_options(SCENARIOS / "default.toml"))
    assert default.device == ("cuda",) and default.lengths == tuple(1024 << i for i in range(7)) and default.dtype == ("bfloat16",)
