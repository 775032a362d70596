"""A Plan's targetNamespace becomes a Kubernetes name and a directory: DNS-1123 only."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ferry.migration_controller import planning
from ferry.proto import objects

from .conftest import inventory_vm

ESCAPES = ["../..", "/etc", "a/b", "Default", "x" * 64]


@pytest.mark.parametrize("namespace", ESCAPES)
def test_a_plan_naming_an_escaping_namespace_is_not_applied(
    docs: dict[str, objects.FerryObjectBase], namespace: str
) -> None:
    # Given a valid Plan, When its targetNamespace is set to a path or a non-label
    plan = docs["Plan"]
    assert isinstance(plan, objects.Plan)
    document = plan.spec.model_dump()
    document["targetNamespace"] = namespace
    # Then the Plan is refused, naming the field
    with pytest.raises(ValidationError, match="targetNamespace"):
        objects.PlanSpec.model_validate(document)


@pytest.mark.parametrize("namespace", ESCAPES)
def test_preflight_rejects_a_stored_plan_with_an_escaping_namespace(
    docs: dict[str, objects.FerryObjectBase], namespace: str
) -> None:
    # Given a Plan whose namespace got past validation (a document written to the bucket)
    plan = docs["Plan"]
    assert isinstance(plan, objects.Plan)
    spec = plan.spec.model_copy(
        update={"vms": [objects.PlanVm(id="1")], "targetNamespace": namespace}
    )
    bad = plan.model_copy(update={"spec": spec})
    # When the migration is checked
    result = planning.preflight(
        bad,
        docs["vmware"],  # type: ignore[arg-type]
        [inventory_vm("1", "a")],
        docs["NetworkMap"],  # type: ignore[arg-type]
        docs["StorageMap"],  # type: ignore[arg-type]
    )
    # Then it is rejected with the reason, and nothing would run
    assert not result.ok
    assert any("targetNamespace" in r for r in result.reasons[planning.PLAN_KEY])
