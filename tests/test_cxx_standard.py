"""The C++ and CUDA sources stay within C++17.

torch picks the language standard its extensions build with: C++20 for the torch on the development machines
(2.14), C++17 for the torch on the GPU machines (2.11), whose build once failed on a std::type_identity that the
C++20 build here had accepted. This lists the C++20 library names and syntax most likely to slip in; it cannot
list everything, so the GPU build remains the final check.
"""
import re
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SOURCES = sorted(p for p in CSRC.rglob("*") if p.suffix in {".h", ".cuh", ".cpp", ".cu"})

# (pattern, what it is)
CXX20_ONLY = [
    (r"std::type_identity\b", "std::type_identity"),
    (r"std::span\b|#include\s*<span>", "std::span"),
    (r"std::bit_cast\b|#include\s*<bit>", "std::bit_cast / <bit>"),
    (r"\bconsteval\b|\bconstinit\b", "consteval / constinit"),
    (r"std::remove_cvref\b", "std::remove_cvref"),
    (r"<=>", "the three-way comparison operator"),
    (r"std::ssize\b", "std::ssize"),
    (r"#include\s*<(concepts|ranges|numbers|format|source_location)>", "a C++20 header"),
    (r"\bstd::ranges::|\bstd::views::", "ranges"),
    (r"\brequires\s*[({]|\bconcept\s+\w+\s*=", "concepts"),
    (r"\]\s*<\s*(typename|class|int|auto)\b", "a template lambda"),
    (r"\.(starts_with|ends_with|contains)\(", "C++20 string / container members"),
    (r"\[\[(likely|unlikely|no_unique_address)\]\]", "a C++20 attribute"),
    (r"\busing\s+enum\b", "using enum"),
]


def _code(path: Path) -> str:
    """The source without its comments (comments may name C++20 features)."""
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def test_sources_are_found():
    assert len(SOURCES) >= 10 and any(p.suffix == ".cu" for p in SOURCES)


@pytest.mark.parametrize("pattern, feature", CXX20_ONLY, ids=[f for _, f in CXX20_ONLY])
def test_no_cxx20_feature(pattern, feature):
    hits = [f"{p.relative_to(CSRC.parent)}:{code[:m.start()].count(chr(10)) + 1}"
            for p in SOURCES for code in [_code(p)] for m in re.finditer(pattern, code)]
    assert not hits, f"{feature} is C++20; the extension must build as C++17 (torch 2.11): {', '.join(hits)}"


def test_the_check_sees_a_cxx20_feature(tmp_path):
    # the patterns match what they name, in code but not in comments
    source = tmp_path / "probe.cu"
    source.write_text("// std::type_identity in a comment\nauto t = std::type_identity<int>{};\n")
    code = _code(source)
    assert len(re.findall(CXX20_ONLY[0][0], code)) == 1
