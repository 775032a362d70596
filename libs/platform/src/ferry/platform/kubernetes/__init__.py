"""The kubernetes platform: volumes as CDI DataVolumes or populator PVCs, VMs as KubeVirt
VirtualMachines, driven through kubernetes-asyncio (``platform.KubernetesPlatform``)."""
