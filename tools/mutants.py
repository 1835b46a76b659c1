"""`make mutants`: mutation testing (mutmut 3) of the files a change touches, with their fast tests.

    make mutants                                   # files changed since the merge base with main
    make mutants FILES="engine/metrics.py data/sampling.py"
    make mutants FILES=engine/optim.py TESTS="tests/test_optim.py"
    make mutants FILES=data/augment.py FUNCTIONS="ClipAugment._mix half_roll"   # part of a large file
    python tools/mutants.py --base origin/main

mutmut copies the sources into a scratch folder, plants one small bug at a time (an operator, a
constant, a dropped argument) and runs the tests that reach the mutated function; a mutant the tests
do not notice "survived". The run happens in `.mutants/` (git-ignored, rebuilt on every run) with a
pyproject.toml made from ours: `[tool.mutmut]` (the shared settings) plus the chosen files
(`only_mutate`) and their fast tests (`pytest_add_cli_args_test_selection`). It ends with the score per
file and the diff of every surviving mutant.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path("src/cast_video")
WORK = ROOT / ".mutants"

# The fast tests that pin a module where the naming rule of `fast_tests` does not find them; TESTS= overrides.
FAST_TESTS: dict[str, list[str]] = {
    "engine/config.py": ["tests/test_configs.py"],
}


def source_file(name: str) -> Path:
    """`engine/metrics.py`, `cast_video/engine/metrics.py` or `src/cast_video/engine/metrics.py`."""
    path = Path(name)
    for candidate in (path, Path("src") / path, PACKAGE / path):
        if (ROOT / candidate).is_file() and candidate.parts[:2] == PACKAGE.parts:
            return candidate
    raise SystemExit(f"mutants: {name}: not a file under {PACKAGE}")


def changed_files(base: str) -> list[Path]:
    """Python files of the package changed since the merge base with `base`, committed or not."""
    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"mutants: `git {' '.join(args)}` failed: {run.stderr.strip()}; name the files "
                             "with FILES=... or the branch to compare with with BASE=...")
        return run.stdout

    merge_base = git("merge-base", base, "HEAD").strip()
    names = git("diff", "--name-only", merge_base).split() + git("ls-files", "--others", "--exclude-standard").split()
    return sorted({Path(n) for n in names
                   if n.endswith(".py") and Path(n).parts[:2] == PACKAGE.parts and (ROOT / n).is_file()})


def fast_tests(path: Path) -> list[str]:
    """The listed tests, else the test file named after the module (tests/test_data_sampling.py,
    test_metrics.py, test_engine.py, test_model.py for models/), else the test files importing it by name."""
    relative = path.relative_to(PACKAGE)
    if relative.as_posix() in FAST_TESTS:
        return FAST_TESTS[relative.as_posix()]
    folder, stem = relative.parent.name, relative.stem
    names = [f"test_{folder}_{stem}.py", f"test_{stem}.py", f"test_{folder}.py", f"test_{folder.removesuffix('s')}.py"]
    for name in names if folder else names[1:2]:
        if (ROOT / "tests" / name).is_file():
            return [f"tests/{name}"]
    module = ".".join(path.with_suffix("").parts[1:])  # cast_video.engine.metrics
    pattern = re.compile(rf"\b{re.escape(module)}\b")
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py")
                  if pattern.search(p.read_text()))


def toml_value(value) -> str:
    """TOML for the plain values a [tool.mutmut] table holds (JSON's strings, numbers and lists are TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_workdir(files: list[Path], tests: list[str]) -> None:
    """A fresh scratch copy: src, tests and configs, and a pyproject.toml for this selection."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("src", "tests", "configs"):
        shutil.copytree(ROOT / folder, WORK / folder, ignore=ignore)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    settings = {**project["tool"]["mutmut"], "only_mutate": [f.as_posix() for f in files],
                "pytest_add_cli_args_test_selection": tests}
    lines = ["[tool.mutmut]", *(f"{k} = {toml_value(v)}" for k, v in settings.items()), "",
             "[tool.pytest.ini_options]",
             *(f"{k} = {toml_value(v)}" for k, v in project["tool"]["pytest"]["ini_options"].items())]
    (WORK / "pyproject.toml").write_text("\n".join(lines) + "\n")


def mutant_patterns(files: list[Path], functions: list[str]) -> list[str]:
    """mutmut's names for the mutants of `functions` in `files`: `half_roll` -> `cast_video.data.augment.x_half_roll*`,
    `ClipAugment._mix` -> `cast_video.data.augment.xǁClipAugmentǁ_mix*` (mutmut 3's mangling)."""
    patterns = []
    for path in files:
        module = ".".join(path.with_suffix("").parts[1:])
        for name in functions:
            owner, _, method = name.rpartition(".")
            patterns.append(f"{module}.xǁ{owner}ǁ{method}*" if owner else f"{module}.x_{name}*")
    return patterns


def mutmut(*args: str, capture: bool = False) -> str:
    run = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=WORK, text=True,
                         capture_output=capture, check=False)
    if run.returncode != 0:
        raise SystemExit(f"mutants: `mutmut {' '.join(args)}` failed ({run.returncode})\n{run.stderr or ''}")
    return run.stdout if capture else ""


def report(files: list[Path]) -> int:
    """Print the score per file and every surviving mutant's diff; returns the number of survivors."""
    lines = mutmut("results", "--all", "true", capture=True).splitlines()
    results = [line.strip().rsplit(": ", 1) for line in lines if ": " in line]
    results = [(name, status) for name, status in results if status != "not checked"]  # --functions left them
    survivors = [name for name, status in results if status == "survived"]
    for name in survivors:
        print(mutmut("show", name, capture=True))
    print("mutation score (killed / all, per file):")
    for path in files:
        module = ".".join(path.with_suffix("").parts[1:]) + "."
        counts = Counter(status for name, status in results if name.startswith(module))
        total = sum(counts.values())
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"  {path}: {counts['killed']}/{total} killed ({detail})")
    print(f"{len(survivors)} surviving mutant(s)" + (": each is a bug the tests would let through, or an "
                                                     "equivalent rewrite (say why in the change)" if survivors else ""))
    return len(survivors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="files under src/cast_video (default: changed since --base)")
    parser.add_argument("--base", default="main", help="branch to diff against (default: main)")
    parser.add_argument("--tests", nargs="*", default=None, help="test files to run (default: each file's fast tests)")
    parser.add_argument("--max-children", type=int, default=None, help="parallel mutants (default: CPU count)")
    parser.add_argument("--functions", nargs="*", default=None,
                        help="only these functions / Class.methods of the files (a large file takes hours whole)")
    args = parser.parse_args(argv)
    files = [source_file(f) for f in args.files] if args.files else changed_files(args.base)
    if not files:
        print(f"mutants: no Python file under {PACKAGE} changed since {args.base}; name some with FILES=...")
        return 0
    tests = args.tests or sorted({t for f in files for t in fast_tests(f)})
    if not tests:
        raise SystemExit(f"mutants: no test file imports {', '.join(map(str, files))}; name them with TESTS=...")
    print(f"mutating {', '.join(map(str, files))}\nwith {' '.join(tests)}", flush=True)
    write_workdir(files, tests)
    mutmut("run", *(["--max-children", str(args.max_children)] if args.max_children else []),
           *mutant_patterns(files, args.functions or []))
    report(files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
