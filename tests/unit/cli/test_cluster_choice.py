"""``--context`` / ``--kubeconfig`` choose a cluster for one invocation only."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ferry.cli import cluster
from ferry.cli.main import app


def test_a_cluster_chosen_by_one_invocation_is_not_the_next_ones(tmp_path: Path) -> None:
    # Given an invocation that named a kubeconfig whose cluster does not answer
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        "clusters: [{name: gone, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: nobody}}]\n"
        "users: [{name: nobody, user: {}}]\n"
    )
    done = CliRunner().invoke(app, ["--kubeconfig", str(config), "-n", "apps", "get", "plans"])
    assert done.exit_code == 1 and "127.0.0.1:9" in done.output, done.output
    # Then, once it ended, the next invocation in this process starts on the local stack
    assert not cluster.selected()
    assert cluster.Selected.namespace == ""


def test_a_kubeconfig_that_is_not_there_is_named(tmp_path: Path) -> None:
    # Given --kubeconfig naming no file
    missing = tmp_path / "no-such-kubeconfig"
    done = CliRunner().invoke(app, ["--kubeconfig", str(missing), "get", "plans"])
    # Then the command says which file, before trying anything
    assert done.exit_code == 2 and f"--kubeconfig {missing}: no such file" in done.output
