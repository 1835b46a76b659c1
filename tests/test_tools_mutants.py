"""tools/mutants.py: FUNCTIONS= must select exactly the mutants mutmut 3 names for those functions (names as
`mutmut results` printed them for data/augment.py), and nothing of the others."""

import importlib.util
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mutants_tool", ROOT / "tools" / "mutants.py")
mutants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutants)


def test_functions_select_mutmuts_names_of_those_functions_only():
    patterns = mutants.mutant_patterns([Path("src/cast_video/data/augment.py")], ["ClipAugment._mix", "half_roll"])
    chosen = ["cast_video.data.augment.xǁClipAugmentǁ_mix__mutmut_6", "cast_video.data.augment.x_half_roll__mutmut_8"]
    others = ["cast_video.data.augment.xǁClipAugmentǁ_clips__mutmut_1",
              "cast_video.data.augment.x_smooth_one_hot__mutmut_2", "cast_video.data.sampling.x_half_roll__mutmut_1"]
    assert all(any(fnmatchcase(n, p) for p in patterns) for n in chosen)
    assert not any(fnmatchcase(n, p) for n in others for p in patterns)
    assert mutants.mutant_patterns([Path("src/cast_video/data/augment.py")], []) == []  # no FUNCTIONS: all
