"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy>=1.11")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The CPU benchmarks; not part of the default run.

    Arguments go to ``benchmarks/run_all.py``: ``nox -s bench -- --small`` is the
    smoke run, ``-- --only tiny_step`` one benchmark. Run as a module from the
    root, since ``benchmarks`` is not an installed package.
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks.run_all", *session.posargs)
