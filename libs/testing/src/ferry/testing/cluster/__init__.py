"""A Kubernetes cluster stand-in that is as strict as upstream where Ferry depends on it.

What it models: an API server (:mod:`.api`: real HTTP, selectors, merge patches,
status subresource, watch, pod logs, schema admission, 404 for CRDs not
installed); the PV controller, provisioner and scheduler's volume binding
(:mod:`.binder`: WaitForFirstConsumer, selected-node, populator claims left
alone, re-bind by ``claimRef``, ``Lost``); a kubelet (:mod:`.kubelet`) that runs
a pod's container as a local process in its own mount namespace with its claims,
Secret files, env, exit code and termination message; CDI and KubeVirt phases
(:mod:`.operators`), the guest of a VirtualMachineInstance booted under QEMU
(:mod:`.launcher`).

What it does not: authentication and RBAC (every request is allowed), admission
webhooks, quotas, more than one container per pod, restarts (``restartPolicy``
other than ``Never`` runs once), CDI's importer pods (http/imageio/vddk/upload
sources never fill), restarting an ended VirtualMachineInstance, node failures,
set-based label selectors. Needs root (mount namespaces).
"""
