// Compiled into govmomi's simulator package with go build -overlay (see server.py).

package simulator

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// ChangeBlock is the granularity of the modelled change tracking, as vSphere's
// CBT reports areas of at least 64 KiB.
const ChangeBlock = 64 * 1024

// changeTracker models what CBT needs from a snapshot: a change id per disk.
//
// When a snapshot of a VM with CBT on is taken, each flat disk in the snapshot's
// configuration gets a new change id (backing.changeId, as vSphere reports it),
// and the tracker records a SHA-256 digest of every 64 KiB block of the disk's
// -flat.vmdk at that moment (holes are not read). A later query with that change
// id answers the blocks whose digest differs now. This is content comparison, not
// a write log: a write that leaves a block's bytes as they were is not reported
// (vSphere would report it), which only makes the answer smaller, never wrong for
// a copy. Change ids outlive their snapshots, as vSphere's do.
type changeTracker struct {
	mu      sync.Mutex
	serial  int
	records map[string][][32]byte // change id -> digest per block
}

var tracker = &changeTracker{records: map[string][][32]byte{}}

// ChangeTracker is the handler the launcher registers on the model's registry.
func ChangeTracker() RegisterObject { return tracker }

func (t *changeTracker) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "FerryChangeTracker", Value: "ferry-change-tracker"}
}

func (t *changeTracker) UpdateObject(mo.Reference, []types.PropertyChange) {}

func (t *changeTracker) RemoveObject(types.ManagedObjectReference) {}

// PutObject gives a new snapshot's flat disks their change ids.
func (t *changeTracker) PutObject(item mo.Reference) {
	snapshot, ok := item.(*VirtualMachineSnapshot)
	if !ok {
		return
	}
	vm, ok := Map.Get(snapshot.Vm).(*VirtualMachine)
	if !ok || vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
		return
	}
	// The snapshot's configuration is a shallow copy of the VM's: copy each disk
	// before giving it a change id, so neither the VM nor older snapshots change.
	devices := make([]types.BaseVirtualDevice, len(snapshot.Config.Hardware.Device))
	for i, device := range snapshot.Config.Hardware.Device {
		devices[i] = device
		disk, ok := device.(*types.VirtualDisk)
		if !ok {
			continue
		}
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		path, fault := flatPath(vm, backing)
		if fault != nil {
			continue
		}
		blocks, err := digests(path, diskSize(disk))
		if err != nil {
			continue
		}
		copiedDisk, copiedBacking := *disk, *backing
		copiedBacking.ChangeId = t.record(blocks)
		copiedDisk.Backing = &copiedBacking
		devices[i] = &copiedDisk
	}
	snapshot.Config.Hardware.Device = devices
}

func (t *changeTracker) record(blocks [][32]byte) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.serial++
	id := fmt.Sprintf("52 66 65 72 72 79 63 62-74 6b 00 00 00 00 00 00/%d", t.serial)
	t.records[id] = blocks
	return id
}

func (t *changeTracker) lookup(id string) ([][32]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	blocks, ok := t.records[id]
	return blocks, ok
}

// current is the digest per block of the disk as of the named snapshot, or now.
func (t *changeTracker) current(
	vm *VirtualMachine, snapshot *types.ManagedObjectReference, key int32, path string, size int64,
) ([][32]byte, types.BaseMethodFault) {
	if snapshot == nil {
		blocks, err := digests(path, size)
		if err != nil {
			return nil, &types.FileFault{File: path}
		}
		return blocks, nil
	}
	taken, ok := Map.Get(*snapshot).(*VirtualMachineSnapshot)
	if !ok || taken.Vm != vm.Self {
		return nil, &types.InvalidArgument{InvalidProperty: "snapshot"}
	}
	for _, device := range taken.Config.Hardware.Device {
		disk, ok := device.(*types.VirtualDisk)
		if !ok || disk.Key != key {
			continue
		}
		if backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			if blocks, known := t.lookup(backing.ChangeId); known {
				return blocks, nil
			}
		}
	}
	return nil, &types.NotSupported{} // a snapshot taken while CBT was off
}

// digests reads a flat file block by block; a block inside a hole is not read.
func digests(path string, size int64) ([][32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	count := (size + ChangeBlock - 1) / ChangeBlock
	blocks := make([][32]byte, count)
	zero := sha256.Sum256(make([]byte, ChangeBlock))
	for i := range blocks {
		blocks[i] = zero
	}
	buf := make([]byte, ChangeBlock)
	for offset := int64(0); offset < size; {
		data, err := f.Seek(offset, seekData)
		if err != nil || data >= size {
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil || hole > size {
			hole = size
		}
		for block := data / ChangeBlock; block*ChangeBlock < hole; block++ {
			n, err := f.ReadAt(buf, block*ChangeBlock)
			if err != nil && err != io.EOF {
				return nil, err
			}
			for j := n; j < ChangeBlock; j++ {
				buf[j] = 0
			}
			blocks[block] = sha256.Sum256(buf)
		}
		offset = (hole + ChangeBlock - 1) / ChangeBlock * ChangeBlock
	}
	return blocks, nil
}

// changedBlocks merges the blocks that differ into areas, clipped to the disk.
func changedBlocks(since, now [][32]byte, from, size int64) []types.DiskChangeExtent {
	var areas []types.DiskChangeExtent
	for block := from / ChangeBlock; block*ChangeBlock < size; block++ {
		var before, after [32]byte
		if int(block) < len(since) {
			before = since[block]
		}
		if int(block) < len(now) {
			after = now[block]
		}
		if before == after {
			continue
		}
		start := block * ChangeBlock
		length := int64(ChangeBlock)
		if start+length > size {
			length = size - start
		}
		if n := len(areas); n > 0 && areas[n-1].Start+areas[n-1].Length == start {
			areas[n-1].Length += length
			continue
		}
		areas = append(areas, types.DiskChangeExtent{Start: start, Length: length})
	}
	return areas
}
