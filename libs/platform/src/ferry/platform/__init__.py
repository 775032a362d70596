"""Ferry target platforms: the ``Platform`` seam (``base``) made of volumes, VMs and
workloads (``volumes``, ``vms``, ``workloads``), the types they share (``images``,
``errors``), their settings (``settings``), the implementations (``local``,
``kubernetes``) chosen by ``factory``, and the disk data path (``copy``)."""
