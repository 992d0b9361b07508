"""Which definition a run follows: the version it started with, unless migrated.

A run's cursor is an index into its workflow's step list, so a release that
adds or moves a step must not run the new list over a run started on the old
one. Every run records its definition's version (runs stored before versions
existed are version 1); the engine executes it with that version while the
release still ships it, or moves it with a :class:`~userflow.actors.workflow.Migration`
the newer version declares. A run whose version is neither shipped nor
migrated is left untouched, with an error naming it: never run on the wrong steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from userflow.actors.status import RunStatus
from userflow.actors.timeutil import bucket, epoch
from userflow.actors.workflow import Workflow
from userflow.storage.port import ACTIVE, Entry

#: The statuses of the runs the engine still has work for (``ACTIVE`` in the catalog).
ACTIVE_STATUSES = frozenset((RunStatus.RUNNING, RunStatus.WAITING))
#: The facet of a finished run whose details retention has not dropped yet.
KEPT = ("details", "kept")


def current_step(run: Mapping[str, Any]) -> str | None:
    steps = run["steps"]
    cursor = run["cursor"]
    return steps[cursor]["id"] if cursor < len(steps) else None


class UnknownDefinition(LookupError):
    """A run's workflow version this release neither ships nor migrates."""


class Definitions(Mapping[str, Workflow]):
    """Every version of every workflow; as a mapping, each name's newest version (what new runs use)."""

    def __init__(self, workflows: Iterable[Workflow]) -> None:
        self._versions: dict[tuple[str, int], Workflow] = {}
        self._newest: dict[str, Workflow] = {}
        for workflow in workflows:
            key = (workflow.name, workflow.version)
            if key in self._versions:
                raise ValueError(f"workflow {workflow.name} version {workflow.version} is given twice")
            self._versions[key] = workflow
            if workflow.name not in self._newest or workflow.version > self._newest[workflow.name].version:
                self._newest[workflow.name] = workflow

    def __getitem__(self, name: str) -> Workflow:
        return self._newest[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._newest)

    def __len__(self) -> int:
        return len(self._newest)

    def of(self, run: Mapping[str, Any]) -> Workflow:
        """The definition ``run`` follows now (no migration applied)."""
        found = self._versions.get((run["workflow"], int(run.get("definition", 1))))
        if found is None:
            raise UnknownDefinition(self.why_not(run))
        return found

    def keys(self, run: Mapping[str, Any]) -> dict[str, list[str]]:
        """The run's lookup keys, as the version it follows gives them (its workflow's
        newest if that version is not shipped: a key still finds a run left as it is)."""
        return self._follows(run).keys(run)

    def _follows(self, run: Mapping[str, Any]) -> Workflow:
        """The version the run follows, or its workflow's newest if that is not shipped."""
        return self._versions.get((run["workflow"], int(run.get("definition", 1)))) or self._newest[run["workflow"]]

    def summary(self, run: Mapping[str, Any]) -> dict[str, Any]:
        """What a list shows of the run: the engine's fields and its workflow's."""
        summary = {
            "id": run["id"],
            "workflow": run["workflow"],
            "status": run["status"],
            "currentStep": current_step(run),
            "outcome": run.get("outcome"),
            "error": run.get("error"),
            "createdAt": run["createdAt"],
            "updatedAt": run["updatedAt"],
            "finishedAt": run.get("finishedAt"),
            "definition": run.get("definition", 1),
            "events": len(run.get("events", ())),  # how many the run has told of (webhooks)
            "detailsDropped": run.get("detailsDropped"),  # by retention or erasure
            "erasedAt": run.get("erasedAt"),
        }
        summary.update(self._follows(run).summary(run))
        return summary

    def describe(self, run: Mapping[str, Any]) -> Entry | None:
        """The run as the store's catalog keeps it; None for a workflow not shipped."""
        if run.get("workflow") not in self._newest:
            return None
        status = run["status"]
        facets = {"status": status, "started": bucket(run["createdAt"])}
        if status == RunStatus.FAILED and run.get("finishedAt"):
            facets["failed"] = bucket(run["finishedAt"])
        if status in ACTIVE_STATUSES:
            facets[ACTIVE[0]] = ACTIVE[1]
        elif not run.get("detailsDropped"):
            facets[KEPT[0]] = KEPT[1]
        workflow = self._follows(run)
        facets.update(workflow.facets(run))
        return Entry(run["id"], self.summary(run), facets, workflow.keys(run), epoch(run["updatedAt"]))

    def can_run(self, run: Mapping[str, Any]) -> bool:
        """Whether this release ships the run's version or migrates it."""
        version = int(run.get("definition", 1))
        newest = self._newest.get(run.get("workflow", ""))
        if newest is None:
            return False
        return (run["workflow"], version) in self._versions or any(m.from_version == version for m in newest.migrations)

    def migrate(self, run: dict[str, Any]) -> tuple[Workflow, int | None]:
        """The definition to execute ``run`` with, migrating it in place if the newest
        version of its workflow declares a migration from its version; also the
        version it was migrated from, or None."""
        version = int(run.get("definition", 1))
        newest = self._newest.get(run["workflow"])
        if newest is not None and newest.version != version:
            for migration in newest.migrations:
                if migration.from_version == version:
                    migration.run(run)
                    run["definition"] = newest.version
                    return newest, version
        return self.of(run), None

    def why_not(self, run: Mapping[str, Any]) -> str:
        shipped = sorted(v for name, v in self._versions if name == run["workflow"])
        return (
            f"run {run.get('id')} follows {run['workflow']} version {run.get('definition', 1)}, which this release "
            f"neither ships (it has {shipped or 'none'}) nor migrates; it is left as it is"
        )
