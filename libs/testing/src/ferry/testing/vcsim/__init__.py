"""govmomi's vSphere API simulator (vcsim), built here and run per test.

Debian ships the simulator as Go library sources (``golang-github-vmware-govmomi-dev``)
but no ``vcsim`` command, so :mod:`ferry.testing.vcsim.server` builds the small
launcher in ``go/`` offline, in GOPATH mode against ``/usr/share/gocode``, caches
the binary by the hash of every input, and starts it on a free loopback port. The
``go/simulator`` files are compiled into govmomi's simulator package with
``go build -overlay`` (no packaged file is changed); each says what it models.
"""
