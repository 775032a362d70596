// Compiled into govmomi's simulator package with go build -overlay (see server.py).

package simulator

import (
	"io"
	"os"
	"strings"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Whence values of lseek(2) on Linux: the next data byte, the next hole.
const (
	seekData = 3
	seekHole = 4
)

// QueryChangedDiskAreas models changed block tracking:
//
//   - changeId "*" answers the allocated areas of a flat disk's -flat.vmdk file,
//     read from the file system's holes (SEEK_DATA / SEEK_HOLE);
//   - a change id handed out by a snapshot (see change_tracker.go) answers the
//     64 KiB blocks whose contents differ between that snapshot and the one named
//     by the request (or the live file when none is named);
//
// from startOffset to the end of the disk, in one answer. It refuses, as vSphere
// does, a VM without CBT on, a disk that is not a flat file and a change id it
// never handed out.
func (vm *VirtualMachine) QueryChangedDiskAreas(req *types.QueryChangedDiskAreas) soap.HasFault {
	body := new(methods.QueryChangedDiskAreasBody)
	if vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
		body.Fault_ = Fault("changed block tracking is not enabled", &types.NotSupported{})
		return body
	}
	var disk *types.VirtualDisk
	for _, device := range vm.Config.Hardware.Device {
		if d, ok := device.(*types.VirtualDisk); ok && d.Key == req.DeviceKey {
			disk = d
		}
	}
	if disk == nil {
		body.Fault_ = Fault("", &types.InvalidArgument{InvalidProperty: "deviceKey"})
		return body
	}
	backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		body.Fault_ = Fault("not a flat disk", &types.NotSupported{})
		return body
	}
	path, fault := flatPath(vm, backing)
	if fault != nil {
		body.Fault_ = Fault("", fault)
		return body
	}
	size := diskSize(disk)
	var areas []types.DiskChangeExtent
	if req.ChangeId == "*" {
		var err error
		if areas, err = allocated(path, req.StartOffset, size); err != nil {
			body.Fault_ = Fault(err.Error(), &types.FileFault{File: backing.FileName})
			return body
		}
	} else {
		since, known := tracker.lookup(req.ChangeId)
		if !known {
			body.Fault_ = Fault("unknown change id "+req.ChangeId,
				&types.InvalidArgument{InvalidProperty: "changeId"})
			return body
		}
		now, fault := tracker.current(vm, req.Snapshot, req.DeviceKey, path, size)
		if fault != nil {
			body.Fault_ = Fault("", fault)
			return body
		}
		areas = changedBlocks(since, now, req.StartOffset, size)
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: types.DiskChangeInfo{
		StartOffset: req.StartOffset,
		Length:      size - req.StartOffset,
		ChangedArea: areas,
	}}
	return body
}

func diskSize(disk *types.VirtualDisk) int64 {
	if disk.CapacityInBytes != 0 {
		return disk.CapacityInBytes
	}
	return disk.CapacityInKB * 1024
}

// flatPath is the local file holding a flat disk's bytes (its -flat.vmdk extent).
func flatPath(vm *VirtualMachine, backing *types.VirtualDiskFlatVer2BackingInfo) (string, types.BaseMethodFault) {
	dc := Map.getEntityDatacenter(vm)
	name := strings.Replace(backing.FileName, ".vmdk", "-flat.vmdk", 1)
	return Map.FileManager().resolve(&dc.Self, name)
}

func allocated(path string, from, size int64) ([]types.DiskChangeExtent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var areas []types.DiskChangeExtent
	for offset := from; offset < size; {
		data, err := f.Seek(offset, seekData)
		if err != nil || data >= size {
			break // ENXIO: no data after offset
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil || hole > size {
			hole = size
		}
		areas = append(areas, types.DiskChangeExtent{Start: data, Length: hole - data})
		offset = hole
	}
	_, _ = f.Seek(0, io.SeekStart)
	return areas, nil
}
