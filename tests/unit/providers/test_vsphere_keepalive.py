"""The vSphere keep-alive's setting: how often a held session is called, or off."""

from __future__ import annotations

import pytest

from ferry.providers.base import ProviderError
from ferry.providers.vsphere import client, keepalive
from ferry.providers.vsphere.provider import VsphereProvider

SECRET = {"user": "ferry", "password": "not-shown"}


def test_the_keep_alive_defaults_to_a_sixth_of_vcenters_idle_timeout() -> None:
    # Given a Provider without the setting / Then a held session is called every 5 min
    assert keepalive.seconds_of({}) == 300.0
    assert keepalive.seconds_of({"keepAliveSeconds": ""}) == 300.0
    # And a value is taken as seconds, 0 turning it off
    assert keepalive.seconds_of({"keepAliveSeconds": "120"}) == 120.0
    assert keepalive.seconds_of({"keepAliveSeconds": "0"}) == 0.0


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_bad_keep_alive_setting_is_refused_naming_it(value: str) -> None:
    # Given a Provider whose setting is not a number of seconds
    settings = {"keepAliveSeconds": value, "insecureSkipVerify": "true"}
    # Then the provider is not built, and the reason names the setting and its value
    with pytest.raises(ProviderError, match=f"keepAliveSeconds is '{value}'"):
        VsphereProvider.create("https://vcenter.example/sdk", settings, SECRET)


def test_the_setting_reaches_the_session() -> None:
    settings = {"keepAliveSeconds": "42", "insecureSkipVerify": "true"}
    provider = VsphereProvider.create("https://vcenter.example/sdk", settings, SECRET)
    assert provider.session.keepalive.seconds == 42.0
    assert not provider.session.keepalive.running


def test_a_session_is_known_by_its_id_not_by_its_cookie_attributes() -> None:
    # Given the cookie as the login set it and as a later answer may set it again
    first = 'vmware_soap_session="52a0-bf93"; Path=/; HttpOnly; Secure'
    again = 'vmware_soap_session="52a0-bf93"'
    # Then both name one session, and another id another one
    assert client.same_session(first, again)
    assert not client.same_session(first, 'vmware_soap_session="52a0-0000"')


def test_requests_carry_only_the_session_cookie_not_its_attributes() -> None:
    # Given the Set-Cookie value pyVmomi keeps after a vCenter login
    stored = 'vmware_soap_session="52a1-b2c3"; Path=/; HttpOnly; Secure;'
    # When a datastore read or nbdkit gets its Cookie / Then only the session's pair,
    # quoted as sent (virt-v2v's vCenter input sends the same)
    assert client.request_cookie(stored) == 'vmware_soap_session="52a1-b2c3"'
    # And it still names the same session for the keep-alive
    assert client.same_session(client.request_cookie(stored), stored)
    # And a value it cannot parse is cut at its first attribute
    assert client.request_cookie("other=1; Path=/") == "other=1"
