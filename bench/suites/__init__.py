"""The shipped suite files, found by name."""
from importlib import resources
from pathlib import Path

from mtlbench.tasks.errors import UserError, nearest


def suite_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("mtlbench.bench.suites").iterdir() if p.name.endswith(".toml"))


def find_suite(name_or_path: str) -> Path:
    """The file of a shipped suite's name or a path; light (no torch), so a typo is answered at once."""
    path, names = Path(name_or_path), suite_names()
    if name_or_path.endswith(".toml") or path.is_file() or (path.exists() and name_or_path not in names):
        if path.is_dir():
            raise UserError(f"{path}: a folder; expected a suite name or a suite .toml file")
        if not path.is_file():
            raise UserError(f"{path}: suite file not found")
        return path
    if name_or_path not in names:
        raise UserError(f"unknown suite '{name_or_path}'{nearest(name_or_path, names)}; suites: {', '.join(names)}")
    return Path(str(resources.files("mtlbench.bench.suites") / f"{name_or_path}.toml"))
