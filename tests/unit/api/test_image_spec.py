"""Image specs: the Dockerfile subset, the steps' checks, cache keys and a build context's
digest. Every refusal names what it refuses (and a Dockerfile's, its line)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError
from corral.api.image_spec import (CopyStep, EnvStep, ImageSpec, PackagesStep, RunStep,
                                   UserStep, WorkdirStep, checked, context_digest,
                                   context_relative, parse_dockerfile, step_keys)

pytestmark = pytest.mark.rootless

DOCKERFILE = """\
# syntax comments and blank lines are skipped
ARG PY=3.11

FROM python AS base
ARG PKG=requests
ENV APP_HOME=/srv/app \\
    GREETING="hello world"
WORKDIR $APP_HOME
RUN pip install $PKG==2.31 && \\
    # a comment inside a continued line
    echo "$HOME ${PKG}"
COPY --chown=user requirements.txt src/ ./
ADD ["setup.cfg", "/etc/app/"]
USER user
LABEL org.example.team="data" version=1
ENTRYPOINT ["python3", "-m", "app"]
CMD --serve
"""


def test_a_dockerfile_becomes_a_spec() -> None:
    spec = parse_dockerfile(DOCKERFILE)
    assert spec.base == "python"
    assert spec.steps == [
        EnvStep(env={"APP_HOME": "/srv/app", "GREETING": "hello world"}),
        WorkdirStep(path="/srv/app"),
        # Corral's own ARG/ENV are substituted; the shell expands the rest ($HOME).
        RunStep(command='pip install requests==2.31 &&  echo "$HOME requests"'),
        CopyStep(sources=["requirements.txt", "src"], destination="/srv/app/", chown="user"),
        CopyStep(sources=["setup.cfg"], destination="/etc/app/"),
        UserStep(user="user"),
    ]
    assert spec.labels == {"org.example.team": "data", "version": "1"}
    assert spec.entrypoint == ["python3", "-m", "app"]
    assert spec.cmd == ["/bin/sh", "-c", "--serve"]


def test_build_args_override_defaults() -> None:
    spec = parse_dockerfile("ARG BASE=python\nFROM $BASE\nARG V=1\nENV V=$V\n",
                            build_args={"V": "2"})
    assert spec.base == "python" and spec.steps == [EnvStep(env={"V": "2"})]
    legacy = parse_dockerfile("FROM python\nENV NAME some value here\n")
    assert legacy.steps == [EnvStep(env={"NAME": "some value here"})]


@pytest.mark.parametrize(("text", "named"), [
    ("FROM python\nEXPOSE 80\n", "line 2: EXPOSE is not supported"),
    ("FROM python\nHEALTHCHECK CMD true\n", "line 2: HEALTHCHECK is not supported"),
    ("RUN true\n", "line 1 \\(RUN\\): the Dockerfile must start with FROM"),
    ("# nothing\n", "has no FROM"),
    ("FROM python\nFROM python\n", "line 2 \\(FROM\\): one FROM only"),
    ("FROM Not_An_Image!\n", "line 1 \\(FROM\\).*not an image name"),
    ("FROM --platform=x python\n", "expected FROM IMAGE"),
    ("FROM python\nCOPY https://example.org/x /x\n", "line 2 \\(COPY\\).*no URLs"),
    ("FROM python\nADD git@example.org:x.git /x\n", "line 2 \\(ADD\\).*no URLs"),
    ("FROM python\nCOPY ../secret /x\n", "line 2 \\(COPY\\).*leaves the build context"),
    ("FROM python\nCOPY /etc/passwd /x\n", "line 2 \\(COPY\\).*is absolute"),
    ("FROM python\nCOPY --from=build /a /b\n", "option --from is not supported"),
    ("FROM python\nCOPY a b c\n", "destination must be a directory ending in /"),
    ("FROM python\nCOPY a\n", "expected COPY SOURCE... DESTINATION"),
    ("FROM python\nRUN\n", "line 2 \\(RUN\\): a command is missing"),
    ('FROM python\nRUN ["sh", 1]\n', "exec form must be a JSON array of strings"),
    ("FROM python\nENV 1BAD=x\n", "line 2 \\(ENV\\).*not an environment variable name"),
    ("FROM python\nUSER root;rm\n", "line 2 \\(USER\\).*not a user name"),
    ("FROM python\nARG 9x\n", "line 2 \\(ARG\\).*not an argument name"),
    ("FROM python\nLABEL novalue\n", "line 2 \\(LABEL\\): expected KEY=VALUE"),
    ("FROM python\nWORKDIR a\0b\n", "line 2 \\(WORKDIR\\).*NUL"),
])
def test_bad_dockerfiles_are_refused_naming_the_line(text: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named):
        parse_dockerfile(text)


def test_a_huge_dockerfile_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="larger than 1 MiB"):
        parse_dockerfile("FROM python\n" + "RUN true\n" * 200_000)


@pytest.mark.parametrize(("kind", "package"), [
    ("apt", "Bad_Name"), ("apt", "x; rm -rf /"), ("pip", "-e git+https://x"),
    ("pip", "--index-url=http://x"), ("npm", "../x"), ("npm", "a b"),
])
def test_package_names_are_checked_before_anything_runs(kind: str, package: str) -> None:
    with pytest.raises(InvalidArgumentError, match="package name"):
        checked(PackagesStep, "step 1", kind=kind, packages=[package])


def test_good_package_names_pass() -> None:
    checked(PackagesStep, "s", kind="apt", packages=["curl", "libssl3=3.0.11-1", "g++"])
    checked(PackagesStep, "s", kind="pip", packages=["requests>=2.31,<3", "uvicorn[standard]"],
            index_url="http://127.0.0.1:8080/simple/")
    checked(PackagesStep, "s", kind="npm", packages=["@types/node@^20", "left-pad"])
    with pytest.raises(InvalidArgumentError, match="http"):
        checked(PackagesStep, "s", kind="pip", packages=["x"], index_url="file:///etc")


def test_context_paths_stay_in_the_context() -> None:
    assert context_relative("./a/./b/") == "a/b"
    assert context_relative(".") == "."
    for bad in ("../a", "a/../../b", "/abs", "a\0b"):
        with pytest.raises(InvalidArgumentError):
            context_relative(bad)


def test_cache_keys_change_from_the_changed_step_on() -> None:
    steps: list[object] = [RunStep(command="a"), RunStep(command="b"), RunStep(command="c")]
    first = step_keys(ImageSpec(base="python", steps=steps))
    changed = step_keys(ImageSpec(base="python", steps=[*steps[:2], RunStep(command="d")]))
    assert first[:2] == changed[:2] and first[2] != changed[2]
    other_base = step_keys(ImageSpec(base="other", steps=steps))
    assert all(a != b for a, b in zip(first, other_base, strict=True))
    assert step_keys(ImageSpec(base="python", steps=steps)) == first  # stable
    with pytest.raises(InvalidArgumentError, match="no digest"):
        step_keys(ImageSpec(base="python", steps=[CopyStep(sources=["a"], destination="/a")]))


def test_a_contexts_digest_follows_content_and_mode_not_time(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)\n")
    (tmp_path / "src" / "cache.pyc").write_bytes(b"\0")
    (tmp_path / "src" / "link").symlink_to("a.py")
    first = context_digest(tmp_path, ["src"], ignore=["*.pyc"])
    os.utime(tmp_path / "src" / "a.py", (1, 1))
    assert context_digest(tmp_path, ["src"], ignore=["*.pyc"]) == first
    (tmp_path / "src" / "cache.pyc").write_bytes(b"\1")  # ignored
    assert context_digest(tmp_path, ["src"], ignore=["*.pyc"]) == first
    (tmp_path / "src" / "a.py").chmod(0o755)
    assert context_digest(tmp_path, ["src"], ignore=["*.pyc"]) != first
    (tmp_path / "src" / "a.py").chmod(0o644)
    (tmp_path / "src" / "a.py").write_text("print(2)\n")
    assert context_digest(tmp_path, ["src"], ignore=["*.pyc"]) != first


def test_a_link_out_of_the_context_is_refused(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (tmp_path / "secret").write_text("s")
    (context / "out").symlink_to(tmp_path / "secret")
    (context / "dir").mkdir()
    (context / "dir" / "up").symlink_to("../../secret")
    for source in ("out", "dir", "."):
        with pytest.raises(InvalidArgumentError, match="leads out of the build context"):
            context_digest(context, [source])
    with pytest.raises(InvalidArgumentError, match="not in the build context"):
        context_digest(context, ["missing"])
    (context / "fifo").unlink(missing_ok=True)
    os.mkfifo(context / "fifo")
    with pytest.raises(InvalidArgumentError, match="not a file, a directory or a link"):
        context_digest(context, ["fifo"])
