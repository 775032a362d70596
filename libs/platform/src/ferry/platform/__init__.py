"""Ferry target platforms: the ``Platform`` seam (``base``), its volume and VM halves
(``volumes``, ``vms``), the implementations (``local``, ``kubernetes``) chosen by
``factory``, and the disk data path (``copy``)."""
