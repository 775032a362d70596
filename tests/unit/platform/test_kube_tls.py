"""The API server's certificate is checked unless Ferry's setting or the kubeconfig says not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ferry.platform.kubernetes.platform import api_client
from ferry.platform.settings import KubernetesSettings


def kubeconfig(tmp_path: Path, insecure: bool) -> Path:
    skip = "insecure-skip-tls-verify: true" if insecure else "certificate-authority-data: ''"
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:6443', {skip}}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    return path


@pytest.mark.parametrize(
    ("insecure", "verify_ssl", "checked"),
    [
        (False, True, True),  # the default: checked
        (True, True, False),  # the kubeconfig's context skips it, as kubectl honours
        (False, False, False),  # Ferry's setting turns it off
    ],
)
async def test_the_certificate_is_checked_unless_one_of_them_says_not(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    insecure: bool,
    verify_ssl: bool,
    checked: bool,
) -> None:
    settings = KubernetesSettings(kubeconfig=str(kubeconfig(tmp_path, insecure)),
                                  verify_ssl=verify_ssl)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        client = await api_client(settings)
    try:
        assert client.configuration.verify_ssl is checked
        assert ("insecure-skip-tls-verify" in caplog.text) is insecure
    finally:
        await client.close()
