"""docs/plugins.md stays true: its hook reference matches the specs, and its tutorial runs.

- Every hook spec has a ``### name`` section whose first code line is the
  spec's signature, and which says "first non-None result wins" exactly when
  the spec is ``firstresult``.
- Every hook is named in some test other than this one, so a new hook comes
  with a test.
- The public-API table lists exactly ``ezpz.__all__``.
- The tutorial's shell commands run, in order, in a fresh venv holding only
  ezpz: its ``bash`` blocks verbatim, and each code block whose first line is
  ``# PATH`` (or ``# PATH, continued``) written to (appended to) that file.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import plugin_venv
import pytest

import ezpz
from ezpz_core import hookspecs

DOC = plugin_venv.ROOT / "docs" / "plugins.md"
TESTS = Path(__file__).resolve().parent
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
FILE_MARKER = re.compile(r"# (\S+?)(, continued)?")


def section(title: str) -> str:
    """The text under ``## title`` up to the next second-level heading."""
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def hook_sections() -> dict[str, str]:
    parts = re.split(r"^### (\w+)\n", section("Hook reference"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def signature_line(name: str) -> str:
    """``name(arg: type, ...) -> result`` as the spec's annotations spell it."""
    signature = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"{name}({params}) -> {signature.return_annotation}"


@pytest.mark.parametrize("name", list(hookspecs.hook_names()))
def test_every_hook_is_documented_with_its_signature_and_result_rule(name):
    sections = hook_sections()
    assert name in sections, f"docs/plugins.md has no '### {name}' section"
    body = sections[name]
    [(_, first_block), *_] = BLOCK.findall(body)
    assert first_block.splitlines()[0] == signature_line(name), (
        f"the signature of {name} in docs/plugins.md differs from ezpz_core/hookspecs.py")
    firstresult = getattr(hookspecs, name).ezpz_spec["firstresult"]
    says_first = "first non-None result wins" in " ".join(body.split())
    assert says_first == firstresult, f"{name}: the docs say the wrong result rule"
    assert len(BLOCK.findall(body)) >= 2, f"{name} has no example"


def test_the_reference_documents_no_hook_that_does_not_exist():
    assert set(hook_sections()) <= set(hookspecs.hook_names())


def test_every_hook_has_a_test():
    sources = "\n".join(path.read_text() for path in TESTS.glob("test_*.py")
                        if path.name != Path(__file__).name)
    untested = [name for name in hookspecs.hook_names()
                if not re.search(rf"\b{name}\b", sources)]
    assert untested == [], f"hooks no test mentions: {untested}"


def test_the_public_api_table_lists_exactly_what_ezpz_exports():
    documented = set(re.findall(r"^\| `(\w+)` \|", section("The public API"), flags=re.M))
    assert documented == set(ezpz.__all__)
    for name in ezpz.__all__:
        assert getattr(ezpz, name) is not None


def tutorial_script() -> str:
    """The tutorial as one bash script: file blocks become heredocs, bash blocks stay."""
    lines = ["set -euxo pipefail", "PS4='+ [$SECONDS s] '"]
    for language, body in BLOCK.findall(section("Tutorial")):
        first, _, rest = body.partition("\n")
        marker = FILE_MARKER.fullmatch(first)
        if language == "bash":
            lines.append(body)
        elif language in ("python", "toml") and marker:
            path, mode = marker[1], ">>" if marker[2] else ">"
            lines.append(f'mkdir -p "$(dirname {path})"\ncat {mode} {path} <<\'EZPZ_DOC_EOF\'\n'
                         f"{rest}EZPZ_DOC_EOF")
        elif language != "text":
            raise AssertionError(f"a tutorial block neither runs nor writes a file: {first!r}")
    return "\n".join(lines) + "\n"


def test_the_tutorial_runs_as_written(tmp_path_factory):
    venv = plugin_venv.venv_with(tmp_path_factory, "tutorial", [])
    work = tmp_path_factory.mktemp("tutorial")
    (work / "tutorial.sh").write_text(tutorial_script())
    done = plugin_venv.run(["bash", "tutorial.sh"], cwd=work, env=venv.env(), timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    project = work / "ezpz-curve"
    summary = json.loads((project / "runs" / "curve" / "summary.json").read_text())
    assert summary["model"] == "curve" and summary["steps"] == 320
    assert "curve: step" in done.stdout  # the on_log callback of step 5
    assert "1 passed" in done.stdout  # the plugin's own test
    assert "hook time by plugin" in done.stderr
    assert (work / "runs" / "blobs" / "summary.json").is_file()
