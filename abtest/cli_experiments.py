"""``abtest experiments``: configure experiments through the API's own service layer.

Every command calls the functions behind ``/v1/experiments`` (:mod:`abtest.services.experiments`)
with the same validation, one transaction per write, so a refused change writes nothing. Each
write is recorded in the audit log under its actor: ``cli:<OS user>``, or ``--actor`` /
``ABTEST_ACTOR``.

Exit status: 0 done; 2 bad input, nothing written (a validation error prints ``field: message``,
as the API's 422 does; an unreadable JSON file; a usage error); 1 any other refusal (no such
experiment, a conflict such as an illegal transition, a declined confirmation).

Only click and the standard library load with the module, so ``abtest --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

import click

from .cli_experiments_flags import patch_body, schedule_fields
from .cli_experiments_text import audit_text, changed_fields, changes, experiment_line, experiment_text
from . import cli_common as common
from .cli_common import InputError
from .config import Settings
from .errors import Conflict

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


__all__ = ["experiments", "InputError"]

STATUSES = ("draft", "running", "paused", "stopped")
EXPORT_TABLES = ("requests", "exposures", "events")  # abtest.reports.csv validates the name
JSON_FILE = click.File("r", encoding="utf-8")


def _writes(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every command that changes an experiment: ``--actor`` and ``--json``."""
    fn = click.option("--json", "as_json", is_flag=True,
                      help="print the experiment as the API's JSON instead of a summary line")(fn)
    return click.option("--actor", envvar="ABTEST_ACTOR", metavar="NAME",
                        help="who makes the change, as the audit log records it "
                             "(default: cli:<OS user>; env ABTEST_ACTOR)")(fn)


def _reads(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="print the API's JSON instead of text")(fn)


def _schedules(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The schedule options of ``create`` and ``update`` (they replace the file's fields)."""
    fn = click.option("--stop-at", metavar="TIME|none",
                      help="stop the experiment at this ISO-8601 time with a timezone (after --start-at); "
                           "none: no stop time")(fn)
    fn = click.option("--start-at", metavar="TIME|none",
                      help="start the draft at this ISO-8601 time with a timezone, e.g. 2026-12-01T09:00:00Z; "
                           "none: no start time")(fn)
    fn = click.option("--ramp-step", multiple=True, metavar="AT=COVERAGE",
                      help="a coverage ramp step, e.g. 2026-12-01T10:00:00Z=0.1 (repeatable, in time order; "
                           "together they replace the whole ramp)")(fn)
    return click.option("--ramp", metavar="JSON|none",
                        help='the coverage ramp as JSON, [{"at": TIME, "coverage": SHARE}, ...] '
                             "(none: no ramp)")(fn)


def _done(view: Mapping[str, Any], as_json: bool, summary: str) -> None:
    if as_json:
        common.print_json(view)
    else:
        click.echo(summary)


@click.group("experiments", short_help="Configure experiments, audited as the API does.")
def experiments() -> None:
    """Configure experiments, with the API's validation and audit log.

    Every change is one transaction (a refused one writes nothing) and one audit entry
    under cli:<OS user>, or --actor. Exit status 2: bad input; 1: any other refusal.
    Running API processes pick a change up within their config cache TTL
    (ABTEST_CACHE_TTL_S, 2 s by default).
    """


@experiments.command("create")
@click.option("-f", "--file", "stream", type=JSON_FILE, default="-", show_default=True, metavar="FILE",
              help="the experiment as JSON, the body POST /v1/experiments takes ('-': standard input)")
@_schedules
@_writes
def create(stream: IO[str], actor: str | None, as_json: bool, **flags: Any) -> None:
    """Create a draft experiment from a JSON file or standard input.

    The schedule options set ramp, start_at and stop_at (over the file's): the monitor
    starts the draft at --start-at, applies each ramp step's coverage at its time while the
    experiment runs, and stops it at --stop-at.

    \b
    Example:
      abtest experiments create -f exp.json
      cat exp.json | abtest experiments create --json
      abtest experiments create -f exp.json --start-at 2026-12-01T09:00:00Z \\
          --ramp-step 2026-12-01T09:00:00Z=0.05 --ramp-step 2026-12-02T09:00:00Z=0.5
    """
    from .container import EngineNames
    from .services import experiments as svc

    payload = common.read_json(stream)
    with common.reported():
        schedule = schedule_fields(flags)
    if schedule:
        if not isinstance(payload, Mapping):
            raise InputError("body: must be a JSON object")
        payload = {**payload, **schedule}
    settings = Settings.load()
    with common.reported(), common.database(settings) as database, database.transaction() as session:
        exp = svc.create_experiment(session, payload, common.actor(actor), EngineNames(settings))
        view = svc.experiment_view(exp)
    _done(view, as_json, f"{view['key']}: created ({view['status']}, {len(view['variants'])} variants)")


@experiments.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="only the experiments in this status")
@_reads
def list_(status: str | None, as_json: bool) -> None:
    """List experiments, oldest first.

    One line each, tab-separated: key, status, phase, name, and "treatment paused" when a
    guardrail (or someone) paused the treatment.
    """
    from .services import experiments as svc

    with common.database(Settings.load()) as database, database.session() as session:
        views = [svc.experiment_view(e) for e in svc.list_experiments(session, status)]
    if as_json:
        common.print_json({"experiments": views})
        return
    if not views:
        click.echo("no experiments" + (f" {status}" if status else ""), err=True)
    for view in views:
        click.echo(experiment_line(view))


@experiments.command("show")
@click.argument("key")
@_reads
def show(key: str, as_json: bool) -> None:
    """Show experiment KEY.

    Status, phase, coverage, decision policy, variants, metrics, targeting rules, forced
    units, and whether a guardrail paused the treatment.
    """
    from .services import experiments as svc

    with common.reported(), common.database(Settings.load()) as database, database.session() as session:
        view = svc.experiment_view(svc.get_experiment(session, key))
    click.echo(json.dumps(view, indent=2, ensure_ascii=False) if as_json else experiment_text(view))


# --- update ------------------------------------------------------------------------------

def _apply_update(session: Session, key: str, base: Any, opts: Mapping[str, Any], actor: str,
                  is_engine: Callable[[str], bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Update KEY in ``session`` (row locked) as PATCH does; the views before and after."""
    from .services import experiments as svc

    exp = svc.get_experiment(session, key, for_update=True)
    before = svc.experiment_view(exp)
    svc.update_experiment(session, exp, patch_body(before, base, opts), actor, is_engine)
    return before, svc.experiment_view(exp)


def _phase_warning(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    return (f"warning: {before['key']} has started, and this change of its variants opens phase "
            f"{after['phase']}: every unit is re-randomized, and the report covers phase {after['phase']} "
            f"only (the data of phase {before['phase']} is kept, never mixed in).")


UPDATE_HELP = """Change experiment KEY, as PATCH /v1/experiments/KEY does.

Give a JSON file of the fields to change (-f), flags, or both (flags win). Changing the
variants (weights, engines, the set of arms) of a started experiment opens a new phase:
the command prints a warning and asks before applying it (--yes: don't ask). Coverage
ramps and every other field keep the phase. A stopped experiment can no longer change.

\b
Examples:
  abtest experiments update v2-vs-v1 --coverage 0.5
  abtest experiments update v2-vs-v1 --weights control=0.8,treatment=0.2 --yes
  abtest experiments update v2-vs-v1 --force qa-user-1=treatment --unforce qa-user-2
  abtest experiments update v2-vs-v1 --targeting rules.json --hypothesis "V2 is as good"
  abtest experiments update v2-vs-v1 -f changes.json --dry-run
  abtest experiments update v2-vs-v1 --ramp-step 2026-12-03T09:00:00Z=1 --stop-at 2026-12-20T09:00:00Z

\b
Mutable fields (-f): name, hypothesis, owner, coverage, variants, targeting, forced,
metrics, decision, quality_sample, cuped, dimensions, sticky, ramp, start_at, stop_at,
treatment_paused. A ramp step is {"at": "2026-12-01T10:00:00Z", "coverage": 0.1}; a targeting
rule is {"attribute": "country", "op": "in", "value": ["US", "CA"]}; CUPED options are
{"enabled": true, "lookback_days": 14}; a dimension is {"attribute": "country", "levels": ["US", "DE"]}.
"""


@experiments.command("update", help=UPDATE_HELP)
@click.argument("key")
@click.option("-f", "--file", "stream", type=JSON_FILE, metavar="FILE",
              help="JSON object of the fields to change, the body PATCH takes ('-': standard input)")
@click.option("--name", help="the display name")
@click.option("--owner", help="the owning team or person")
@click.option("--hypothesis", help="what the experiment should show")
@click.option("--coverage", type=float, metavar="SHARE",
              help="share of eligible units enrolled, 0 to 1 (a ramp keeps the phase and every enrolled unit)")
@click.option("--weights", metavar="VARIANT=W,...",
              help="variant weights summing to 1, e.g. control=0.5,treatment=0.5 (variants not named keep "
                   "theirs); on a started experiment this opens a new phase")
@click.option("--variants", "variants_file", type=JSON_FILE, metavar="FILE",
              help="JSON list replacing every variant ({key, engine, weight, control, shadow, quality_reference})")
@click.option("--targeting", "targeting_file", type=JSON_FILE, metavar="FILE",
              help="JSON list replacing the targeting rules ({attribute, op, value}; [] for none)")
@click.option("--force", multiple=True, metavar="UNIT=VARIANT",
              help="always give UNIT this variant, e.g. qa-user-1=treatment (repeatable)")
@click.option("--unforce", multiple=True, metavar="UNIT", help="stop forcing UNIT (repeatable)")
@click.option("--metrics", "metrics_file", type=JSON_FILE, metavar="FILE",
              help="JSON list replacing the metrics ({name, event, kind, role, direction, margin, ...})")
@click.option("--decision", metavar="POLICY", help="the decision policy: superiority or non_inferiority")
@click.option("--quality-sample", metavar="SHARE|none",
              help="share of requests whose completions are scored, in (0, 1]; none: no scoring")
@click.option("--sticky/--no-sticky", default=None,
              help="keep each unit's variant when the weights change (new units follow the new weights)")
@_schedules
@click.option("-y", "--yes", is_flag=True, help="apply a change that opens a new phase without asking")
@click.option("--dry-run", is_flag=True, help="validate and print what would change; write nothing")
@_writes
def update(key: str, stream: IO[str] | None, variants_file: IO[str] | None, targeting_file: IO[str] | None,
           metrics_file: IO[str] | None, yes: bool, dry_run: bool, actor: str | None, as_json: bool,
           **flags: Any) -> None:
    from .container import EngineNames

    files = {"variants": variants_file, "targeting": targeting_file, "metrics": metrics_file}
    opts = {**flags, "files": {field: common.read_json(f) for field, f in files.items() if f is not None}}
    if stream is None and not opts["files"] and all(v in (None, ()) for v in flags.values()):
        raise click.UsageError("nothing to change: give -f FILE or an option such as --coverage (see --help)")
    base = {} if stream is None else common.read_json(stream)
    settings = Settings.load()
    is_engine = EngineNames(settings)
    with common.reported(), common.database(settings) as database:
        who = common.actor(actor)
        with database.session() as session:  # a rehearsal: the same update, rolled back
            before, after = _apply_update(session, key, base, opts, who, is_engine)
            session.rollback()
        from .services.experiments import opens_new_phase

        new_phase = opens_new_phase(before, after)
        if new_phase:
            click.echo(_phase_warning(before, after), err=True)
        if dry_run:
            diff = changes(before, after)
            if as_json:
                common.print_json({"dry_run": True, "changes": diff, "experiment": after})
            else:
                click.echo("\n".join([f"{key}: dry run, nothing written", *(f"  {c}" for c in changed_fields(diff))]))
            return
        if new_phase and not yes:
            click.confirm(f"Open phase {after['phase']} of {key}?", abort=True, err=True)
        with database.transaction() as session:
            before, after = _apply_update(session, key, base, opts, who, is_engine)
            if opens_new_phase(before, after) and not new_phase:  # changed since the rehearsal
                raise Conflict(f"{key} changed meanwhile and this update now opens a new phase; run it again",
                               details={"experiment": key})
    lines = [f"{key}: updated (version {after['version']}, phase {after['phase']})",
             *(f"  {c}" for c in changed_fields(changes(before, after)))]
    _done(after, as_json, "\n".join(lines))


# --- lifecycle ---------------------------------------------------------------------------

_TRANSITION_HELP = {
    "start": "Start experiment KEY.\n\nA draft, or a paused one again: units are assigned from now on.",
    "pause": "Pause experiment KEY.\n\nEvery unit gets the control until it is started again.",
    "stop": "Stop experiment KEY.\n\nFor good: the control for everyone, and no more changes.",
}


def _transition_command(action: str) -> None:
    @experiments.command(action, help=_TRANSITION_HELP[action])
    @click.argument("key")
    @_writes
    def command(key: str, actor: str | None, as_json: bool) -> None:
        from .services import experiments as svc

        with common.reported(), common.database(Settings.load()) as database, database.transaction() as session:
            exp = svc.transition(session, svc.get_experiment(session, key, for_update=True), action, common.actor(actor))
            view = svc.experiment_view(exp)
        _done(view, as_json, f"{view['key']}: {view['status']}")


for _action in ("start", "pause", "stop"):
    _transition_command(_action)


@experiments.command("resume")
@click.argument("key")
@click.option("--reason", help="why the treatment may serve again (kept in the audit log)")
@_writes
def resume(key: str, reason: str | None, actor: str | None, as_json: bool) -> None:
    """Resume the treatment of KEY after a guardrail paused it.

    Its traffic goes to the treatment again (treatment_paused: false), with an audit entry.
    The guardrail monitor checks the experiment again on its next round and pauses the
    treatment again if the harm persists.

    \b
    Example:
      abtest experiments resume v2-vs-v1 --reason "latency spike was a cold cache"
    """
    from .services import experiments as svc
    from .validation import Fields

    with common.reported(), common.database(Settings.load()) as database, database.transaction() as session:
        why = None if reason is None else Fields({"reason": reason}, ["reason"]).str("reason", max_len=1000)
        exp = svc.get_experiment(session, key, for_update=True)
        if not svc.resume_treatment(session, exp, common.actor(actor), why):
            raise Conflict(f"the treatment of {key!r} is not paused", details={"experiment": key})
        view = svc.experiment_view(exp)
    _done(view, as_json, f"{key}: treatment resumed ({view['status']})")


# --- audit and export --------------------------------------------------------------------

@experiments.command("audit")
@click.argument("key")
@_reads
def audit(key: str, as_json: bool) -> None:
    """Print the audit log of KEY.

    Oldest first: when (UTC), who, what, then one indented line per change (old -> new).
    """
    from .services import experiments as svc

    with common.reported(), common.database(Settings.load()) as database, database.session() as session:
        entries = svc.audit_entries(session, svc.get_experiment(session, key))
    if as_json:
        common.print_json({"experiment": key, "entries": entries})
    else:
        click.echo(audit_text(entries))


@experiments.command("export")
@click.argument("key")
@click.option("--table", required=True, metavar="|".join(EXPORT_TABLES),
              help="the raw table: requests (one row per inference), exposures (one per unit and phase) "
                   "or events (those of exposed units or naming the experiment)")
@click.option("-o", "--output", default="-", show_default=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="the CSV file to write ('-': standard output); written whole or not at all")
def export(key: str, table: str, output: str) -> None:
    """Export a raw table of KEY as CSV.

    The same CSV as GET /v1/experiments/KEY/export: one row per stored row, cells that a
    spreadsheet could run as a formula quoted with a leading '.

    \b
    Example:
      abtest experiments export v2-vs-v1 --table requests -o requests.csv
    """
    from sqlalchemy import func, select

    from .reports.csv import export_csv, export_statement
    from .services import experiments as svc

    with common.reported(), common.database(Settings.load()) as database:
        with database.session() as session:
            exp_id = svc.get_experiment(session, key).id
            stmt = export_statement(table, exp_id, key)  # a bad table name is refused here
            rows = session.scalar(select(func.count()).select_from(stmt.subquery()))
        chunks = export_csv(database.engine, table, exp_id, key)
        if output == "-":
            for chunk in chunks:
                click.echo(chunk, nl=False)
        else:
            _write_whole(output, chunks)
    click.echo(f"{rows} {table} rows of {key} written to {'standard output' if output == '-' else output}",
               err=True)


def _write_whole(path: str, chunks: Iterator[str]) -> None:
    """Write ``chunks`` to a temporary file beside ``path``, then rename it: never a partial file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".abtest-export-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
