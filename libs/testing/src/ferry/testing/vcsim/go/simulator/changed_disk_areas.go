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

// QueryChangedDiskAreas models changed block tracking's full query only:
// changeId "*" answers the allocated areas of a flat disk's -flat.vmdk file,
// read from the file system's holes (SEEK_DATA / SEEK_HOLE), from startOffset
// to the end of the disk. It refuses, as vSphere does, a VM without CBT on and
// a disk that is not a flat file; an incremental query (a real change id) is
// NotSupported, because the simulator keeps no change log.
func (vm *VirtualMachine) QueryChangedDiskAreas(req *types.QueryChangedDiskAreas) soap.HasFault {
	body := new(methods.QueryChangedDiskAreasBody)
	if vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
		body.Fault_ = Fault("changed block tracking is not enabled", &types.NotSupported{})
		return body
	}
	if req.ChangeId != "*" {
		body.Fault_ = Fault("vcsim models only changeId \"*\"", &types.NotSupported{})
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
	dc := Map.getEntityDatacenter(vm)
	name := strings.Replace(backing.FileName, ".vmdk", "-flat.vmdk", 1)
	path, fault := Map.FileManager().resolve(&dc.Self, name)
	if fault != nil {
		body.Fault_ = Fault("", fault)
		return body
	}
	size := disk.CapacityInBytes
	if size == 0 {
		size = disk.CapacityInKB * 1024
	}
	areas, err := allocated(path, req.StartOffset, size)
	if err != nil {
		body.Fault_ = Fault(err.Error(), &types.FileFault{File: name})
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: types.DiskChangeInfo{
		StartOffset: req.StartOffset,
		Length:      size - req.StartOffset,
		ChangedArea: areas,
	}}
	return body
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
