"""The house rules on imports, checked on the source (AST), so a violation fails CI.

Every import is read as the absolute names it binds: ``import x.y`` is ``x.y``; ``from x.y
import z`` is ``x.y`` and ``x.y.z`` (``z`` may be a submodule); relative imports are resolved
against the importing module's package. A rule forbids module *prefixes*: ``abtest.db``
forbids ``abtest.db`` and ``abtest.db.anything``, never ``abtest.dbx``. Each rule is checked on
the tree and on a synthetic source that breaks it, so a checker that stopped seeing a kind of
import would fail here too.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("abtest", "engines", "workers")  # the shipped code (tests and benchmarks may import anything)


# --- the checker ---------------------------------------------------------------------------

def module_of(path: str) -> tuple[str, bool]:
    """(dotted module name, is a package) of a source path relative to the root."""
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imported_modules(source: str, path: str) -> set[str]:
    """Every absolute module name the source imports, or may import (``from m import name``)."""
    module, is_package = module_of(path)
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    raise ValueError(f"{path}: relative import beyond the top-level package")
                base = package[:len(package) - (node.level - 1)]
                if node.module:
                    base = [*base, *node.module.split(".")]
            else:
                base = node.module.split(".") if node.module else []
            if not base:
                continue
            names.add(".".join(base))
            names |= {".".join([*base, alias.name]) for alias in node.names if alias.name != "*"}
    return names


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Rule:
    name: str
    files: tuple[str, ...]  # fnmatch patterns of paths relative to the root ("*" spans folders)
    forbidden: tuple[str, ...]  # module prefixes
    example: tuple[str, str]  # (path, source) that breaks the rule
    exempt: tuple[str, ...] = ()

    def applies(self, path: str) -> bool:
        return any(fnmatch(path, p) for p in self.files) and not any(fnmatch(path, p) for p in self.exempt)

    def violations(self, sources: dict[str, str]) -> list[str]:
        found = []
        for path, source in sorted(sources.items()):
            if self.applies(path):
                bad = sorted(n for n in imported_modules(source, path) if any(within(n, f) for f in self.forbidden))
                if bad:
                    found.append(f"{path} imports {', '.join(bad)}")
        return found


SERVER = ("abtest.db", "abtest.models", "abtest.app", "abtest.api", "abtest.container", "abtest.wiring",
          "abtest.services", "abtest.reports", "abtest.cli", "abtest.server", "abtest.demo")
PURE = ("flask", "sqlalchemy", "alembic", "torch", "celery", "redis", "engines", "workers", *SERVER)

RULES = [
    Rule("the statistics are pure", ("abtest/stats/*.py",), PURE,
         ("abtest/stats/frequentist.py", "from abtest.db.session import Session\n")),
    Rule("the assignment evaluator is pure", ("abtest/evaluator.py",), PURE,
         ("abtest/evaluator.py", "from .models import Experiment\n")),
    # (the Redis sticky store imports redis on demand, in RedisStickyStore.from_url)
    Rule("the shared evaluator, definitions and sticky stores import no server code and no HTTP",
         ("abtest/client/evaluation.py", "abtest/client/definitions.py", "abtest/client/sticky.py"),
         (*(m for m in PURE if m != "redis"), "httpx", "abtest.client._client", "abtest.client._async",
          "abtest.client._http"),
         ("abtest/client/evaluation.py", "import httpx\n")),
    Rule("the models and the database know no HTTP", ("abtest/models.py", "abtest/db.py"),
         ("flask", "werkzeug", "abtest.app", "abtest.api"),
         ("abtest/db.py", "import flask.globals\n")),
    Rule("the services and input parsing know no HTTP", ("abtest/services/*.py", "abtest/validation/*.py"),
         ("flask", "werkzeug", "abtest.app", "abtest.api"),
         ("abtest/services/experiments.py", "from ..api.common import services\n")),
    Rule("the OpenAI protocol and serving know no HTTP framework and no dispatcher", ("abtest/openai/*.py",),
         ("flask", "werkzeug", "abtest.app", "abtest.api", "workers", "celery", "redis", "torch"),
         ("abtest/openai/serving.py", "from flask import request\n")),
    Rule("only the app factory and the API import Flask", ("abtest/*.py",), ("flask", "werkzeug"),
         ("abtest/container.py", "from flask import current_app\n"),
         exempt=("abtest/app.py", "abtest/api/*.py", "abtest/console/*.py")),
    Rule("the web console is a client of the services: no queries, engines or dispatchers of its own",
         ("abtest/console/*.py",),
         ("sqlalchemy", "workers", "engines", "celery", "redis", "torch", "abtest.app", "abtest.models"),
         ("abtest/console/ops.py", "from workers.presence import ConsumerView\n")),
    Rule("the SDK imports nothing else of abtest", ("abtest/client/*.py",),
         ("flask", "sqlalchemy", "alembic", "torch", "celery", "engines", "workers",
          *(f"abtest.{m}" for m in ("app", "api", "cli", "config", "container", "db", "demo", "errors",
                                    "evaluator", "assignment", "logs", "models", "prometheus", "reports",
                                    "server", "services", "stats", "testing", "validation", "wiring"))),
         ("abtest/client/_http.py", "from ..errors import ABTestError\n")),
    Rule("the engines know nothing of the service", ("engines/*.py",),
         ("abtest", "flask", "sqlalchemy", "celery", "workers"),
         ("engines/spec.py", "import abtest.config\n")),
    Rule("the API, the CLI and the workers never import the Flask app",
         ("abtest/api/*.py", "abtest/cli.py", "abtest/reports/cli.py", "workers/*.py"), ("abtest.app",),
         ("abtest/api/common.py", "from ..app import create_app\n")),
    Rule("the services container is Flask-free and knows no dispatcher implementation", ("abtest/container.py",),
         ("flask", "werkzeug", "workers", "celery", "redis", "abtest.app", "abtest.api", "abtest.wiring"),
         ("abtest/container.py", "from workers.inprocess import InProcessDispatcher\n")),
    Rule("the in-process dispatcher needs neither celery nor redis",
         ("workers/inprocess.py", "workers/host.py", "workers/runner.py"),
         ("celery", "redis", "kombu", "workers.celery_app", "workers.celery_dispatch", "workers.tasks"),
         ("workers/inprocess.py", "from .celery_app import queue_name\n")),
]

WIRING = "abtest/wiring.py"  # the one module that imports workers


def workers_importers(sources: dict[str, str]) -> list[str]:
    """The modules outside ``workers`` itself that import it."""
    return sorted(path for path, source in sources.items()
                  if not path.startswith("workers/")
                  and any(within(n, "workers") for n in imported_modules(source, path)))


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    found = {str(p.relative_to(ROOT)): p.read_text() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert found
    return found


# --- the rules, on the tree ----------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_holds(rule: Rule, sources: dict[str, str]) -> None:
    assert any(rule.applies(p) for p in sources), f"no file is subject to {rule.name!r}"
    assert rule.violations(sources) == []


def test_exactly_one_module_imports_workers(sources: dict[str, str]) -> None:
    assert workers_importers(sources) == [WIRING]


# --- the rules, on sources that break them -------------------------------------------------

@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_flags_its_violation(rule: Rule) -> None:
    path, source = rule.example
    assert rule.applies(path), (rule.name, path)
    assert rule.violations({path: source}), (rule.name, source)


def test_a_second_importer_of_workers_is_flagged(sources: dict[str, str]) -> None:
    for source in ("import workers\n", "from workers.main import run_worker\n", "from workers import host\n"):
        assert workers_importers({**sources, "abtest/cli.py": source}) == ["abtest/cli.py", WIRING]
    assert workers_importers({WIRING: "import os\n"}) == []  # the wiring itself must import it to count


# --- the checker reads every kind of import ------------------------------------------------

@pytest.mark.parametrize(("source", "path", "expected"), [
    ("import abtest.db.engine\n", "abtest/stats/x.py", {"abtest.db.engine"}),
    ("import os, flask.json as j\n", "abtest/x.py", {"os", "flask.json"}),
    ("from abtest.db import Database\n", "abtest/stats/x.py", {"abtest.db", "abtest.db.Database"}),
    ("from abtest import db\n", "abtest/stats/x.py", {"abtest", "abtest.db"}),
    ("from ..db import Database\n", "abtest/stats/x.py", {"abtest.db", "abtest.db.Database"}),
    ("from .. import models\n", "abtest/stats/x.py", {"abtest", "abtest.models"}),
    ("from . import power\n", "abtest/stats/__init__.py", {"abtest.stats", "abtest.stats.power"}),
    ("from .power import x\n", "abtest/stats/__init__.py", {"abtest.stats.power", "abtest.stats.power.x"}),
    ("from .evaluator import *\n", "abtest/assignment.py", {"abtest.evaluator"}),
    ("def f():\n    from workers.host import EngineHost\n", "abtest/x.py", {"workers.host", "workers.host.EngineHost"}),
])
def test_imported_modules(source: str, path: str, expected: set[str]) -> None:
    assert imported_modules(source, path) == expected


def test_prefixes_match_whole_module_names() -> None:
    assert within("abtest.db", "abtest.db") and within("abtest.db.session", "abtest.db")
    assert not within("abtest.dbx", "abtest.db") and not within("flasky", "flask")


# --- what is imported at run time -----------------------------------------------------------

WATCHED = ("celery", "redis", "kombu", "flask")


def _loaded_after(code: str) -> set[str]:
    """The top-level packages of :data:`WATCHED` loaded in a fresh interpreter that ran ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(WATCHED)!r})))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABTEST_")}  # embedded defaults
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=env, timeout=120)
    return set(out.stdout.split())


def test_the_embedded_dispatcher_loads_neither_celery_nor_redis(tmp_path: Path) -> None:
    assert _loaded_after("import workers.inprocess") & {"celery", "redis", "kombu"} == set()
    code = (f"from abtest.app import create_app\n"
            f"app = create_app({{'database_url': 'sqlite:///{tmp_path}/e.sqlite', 'preload_engines': False,"
            f" 'checkpoint_dir': '{tmp_path}', 'guardrail_interval_s': 0.0}})\n"
            f"assert app.extensions['abtest'].inference.dispatcher.mode == 'embedded'\n")
    assert _loaded_after(code) & {"celery", "redis", "kombu"} == set()


def test_the_container_and_the_cli_load_no_flask() -> None:
    assert "flask" not in _loaded_after("import abtest.container, abtest.wiring, abtest.cli")
