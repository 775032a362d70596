"""The local stack's machinery: one nats-server and the four services as processes.

``ferry up`` and the end-to-end test harness both run the whole system on one
machine. What they share lives here, once: the list of services and how each is
started (:mod:`.services`, including the one function that builds a service's
environment), free ports (:mod:`.ports`), child processes identified by pid *and*
kernel start time so that a reused pid is never mistaken for ours
(:mod:`.processes`), waiting for ``/readyz`` (:mod:`.readiness`), and the
nats-server's configuration and start-up (:mod:`.nats`), ``stack.json`` and its
lock (:mod:`.state`), restarting what exits (:mod:`.supervisor`), starting and
stopping one data dir's stack and the background supervisor (:mod:`.launch`),
and systemd units for a permanent host (:mod:`.systemd`). Each caller keeps only
what is its own: the CLI its options and printing; the harness its replicas,
kills and restarts.
"""

from __future__ import annotations


class StackError(RuntimeError):
    """Something kept the stack from starting or stopping; the message says what and
    carries the evidence (the tail of the failing process's log)."""
