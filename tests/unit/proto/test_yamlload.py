"""Objects' YAML as Kubernetes reads it: a key given twice in one mapping is refused."""

from __future__ import annotations

import pytest

from ferry.proto import objects

TWO_IN_ONE = """\
apiVersion: ferry.dev/v1alpha1
kind: Budget
metadata: {name: wan}
spec: {scope: global, bandwidthMiBps: 256}
apiVersion: ferry.dev/v1alpha1
kind: Provider
metadata: {name: vcenter}
spec: {type: ova}
"""


def test_two_objects_without_a_separator_are_refused_not_half_read() -> None:
    # PyYAML alone keeps the Provider and drops the Budget without a word
    with pytest.raises(objects.ObjectError) as refused:
        objects.load_documents(TWO_IN_ONE, "wave.yaml")
    message = str(refused.value)
    assert "wave.yaml: line 5, column 1" in message
    assert "duplicate key 'apiVersion' (first given on line 1)" in message
    assert "missing '---'" in message


def test_a_key_given_twice_deep_in_a_spec_is_refused_with_its_line() -> None:
    text = """\
apiVersion: ferry.dev/v1alpha1
kind: Budget
metadata: {name: wan}
spec:
  scope: global
  maxVms: 2
  maxVms: 3
"""
    with pytest.raises(objects.ObjectError, match=r"line 7, column 3: .*duplicate key 'maxVms'"):
        objects.load_documents(text, "b.yaml")


def test_merge_keys_may_be_overridden_and_separate_documents_repeat_keys() -> None:
    text = TWO_IN_ONE.replace("apiVersion: ferry.dev/v1alpha1\nkind: Provider",
                              "---\napiVersion: ferry.dev/v1alpha1\nkind: Provider")  # fmt: skip
    text = text.replace(
        "spec: {type: ova}",
        "spec:\n  <<: {type: vsphere, url: 'https://vc/sdk'}\n  type: ova\n  url: ''",
    )
    budget, provider = objects.load_documents(text, "ok.yaml")
    assert budget.KIND == "Budget" and provider.KIND == "Provider"
    assert isinstance(provider, objects.Provider) and provider.spec.type == "ova"
