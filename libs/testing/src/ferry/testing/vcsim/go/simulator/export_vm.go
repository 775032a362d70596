// Compiled into govmomi's simulator package with go build -overlay (see server.py).

package simulator

// Ferry's overlay: NFC export leases (VirtualMachine.ExportVm), as vCenter hands them out.
//
// ExportVm of a powered-off VM returns an HttpNfcLease in state "ready" whose info
// lists one device URL per disk in the VM's device order, keyed by the disk's
// controller and unit (/<vm>/VirtualLsiLogicController0:0), https://*/nfc/<lease>/
// disk-<n>.vmdk ("*" standing for the host, as vCenter writes it), with the disk's
// size in fileSize and the lease's timeout in leaseTimeout. A GET of such a URL streams the disk as a
// streamOptimized VMDK, the format an ESXi NFC export serves, made by qemu-img from
// the disk's flat extent when the lease is created (Content-Length set; Range not
// honoured). A VM that is not powered off is refused with InvalidPowerState, a disk
// that is not a flat file with NotSupported.
//
// The lease expires when no HttpNfcLeaseProgress came for leaseTimeout seconds
// (NfcLeaseTimeout: 300 s, vSphere's default; the launcher's -nfc-lease-timeout
// shortens it): its state turns to "error" with a Timedout fault, a GET in progress
// is cut off, later GETs get 404 and later calls on it the fault.
// HttpNfcLeaseComplete and HttpNfcLeaseAbort end it and remove its files.
//
// The stock simulator has no ExportVm, and its /nfc/ GET handler copies to no
// destination; NfcExports, wrapped around the server's handler by the launcher,
// serves the GETs of these leases and hands every other request on.

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// NfcLeaseTimeout is how long an export lease lives without a progress call.
var NfcLeaseTimeout = 300 * time.Second

var exportLeases sync.Map // lease moref value → *ExportLease

// ExportLease is the HttpNfcLease ExportVm returns.
type ExportLease struct {
	mo.HttpNfcLease

	mu      sync.Mutex
	files   map[string]string // target id → the streamOptimized file served for it
	dir     string
	last    time.Time
	ended   chan struct{}
	expired bool
}

// ExportVm creates the lease; see the file's comment.
func (vm *VirtualMachine) ExportVm(ctx *Context, req *types.ExportVm) soap.HasFault {
	body := new(methods.ExportVmBody)
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		body.Fault_ = Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOff,
			ExistingState:  vm.Runtime.PowerState,
		})
		return body
	}
	dir, err := os.MkdirTemp("", "vcsim-nfc-")
	if err != nil {
		body.Fault_ = Fault(err.Error(), &types.FileFault{})
		return body
	}
	lease := &ExportLease{files: map[string]string{}, dir: dir, last: time.Now(), ended: make(chan struct{})}
	lease.Self.Type = "HttpNfcLease"
	lease.State = types.HttpNfcLeaseStateReady
	lease.InitializeProgress = 100
	timeout := int32(NfcLeaseTimeout / time.Second)
	if timeout < 1 {
		timeout = 1
	}
	info := &types.HttpNfcLeaseInfo{Entity: vm.Self, LeaseTimeout: timeout}
	n := 0
	var total int64
	for _, device := range vm.Config.Hardware.Device {
		disk, ok := device.(*types.VirtualDisk)
		if !ok {
			continue
		}
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			_ = os.RemoveAll(dir)
			body.Fault_ = Fault("not a flat disk", &types.NotSupported{})
			return body
		}
		flat, fault := flatPath(vm, backing)
		if fault != nil {
			_ = os.RemoveAll(dir)
			body.Fault_ = Fault("", fault)
			return body
		}
		name := fmt.Sprintf("disk-%d.vmdk", n)
		stream := filepath.Join(dir, name)
		size := diskSize(disk)
		out, err := streamOf(flat, filepath.Join(dir, name+".raw"), stream, size)
		if err != nil {
			_ = os.RemoveAll(dir)
			body.Fault_ = Fault(fmt.Sprintf("%v: %s", err, out), &types.FileFault{File: backing.FileName})
			return body
		}
		lease.files[name] = stream
		total += size
		info.DeviceUrl = append(info.DeviceUrl, types.HttpNfcLeaseDeviceUrl{
			Key:       deviceKey(vm, disk),
			ImportKey: fmt.Sprintf("/%s/VirtualDisk:%d", vm.Name, n),
			Url:       "", // set below, once the lease has its reference
			Disk:      types.NewBool(true),
			TargetId:  name,
			FileSize:  size,
		})
		n++
	}
	info.TotalDiskCapacityInKB = total / 1024
	lease.Info = info
	ctx.Session.Put(lease)
	ref := lease.Reference()
	info.Lease = ref
	for i := range info.DeviceUrl {
		info.DeviceUrl[i].Url = (&url.URL{
			Scheme: "https",
			Host:   "*",
			Path:   nfcPrefix + ref.Value + "/" + info.DeviceUrl[i].TargetId,
		}).String()
	}
	exportLeases.Store(ref.Value, lease)
	go lease.expire(ctx.Session, ref)
	body.Res = &types.ExportVmResponse{Returnval: ref}
	return body
}

// deviceKey names a disk as vSphere's export leases do: the VM, then the disk's
// controller (its type and bus number) and unit, /vm-42/VirtualLsiLogicController0:0.
func deviceKey(vm *VirtualMachine, disk *types.VirtualDisk) string {
	unit := int32(0)
	if disk.UnitNumber != nil {
		unit = *disk.UnitNumber
	}
	controller := object.VirtualDeviceList(vm.Config.Hardware.Device).FindByKey(disk.ControllerKey)
	kind, bus := "VirtualController", int32(0)
	if c, ok := controller.(types.BaseVirtualController); ok {
		kind = reflect.TypeOf(controller).Elem().Name()
		bus = c.GetVirtualController().BusNumber
	}
	return fmt.Sprintf("/%s/%s%d:%d", vm.Self.Value, kind, bus, unit)
}

// streamOf writes the disk as a streamOptimized VMDK of exactly size bytes: the flat
// extent copied sparsely and cut or extended to the disk's size (the model's flat
// files start empty), then converted by qemu-img.
func streamOf(flat, raw, stream string, size int64) ([]byte, error) {
	if out, err := exec.Command("cp", "--sparse=always", flat, raw).CombinedOutput(); err != nil {
		return out, err
	}
	defer os.Remove(raw)
	if err := os.Truncate(raw, size); err != nil {
		return nil, err
	}
	return exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk",
		"-o", "subformat=streamOptimized", raw, stream).CombinedOutput()
}

// expire turns the lease to "error" once no progress came for the timeout.
func (l *ExportLease) expire(session *Session, ref types.ManagedObjectReference) {
	timeout := time.Duration(l.Info.LeaseTimeout) * time.Second
	for {
		l.mu.Lock()
		left := time.Until(l.last.Add(timeout))
		l.mu.Unlock()
		if left > 0 {
			select {
			case <-l.ended:
				return
			case <-time.After(left):
				continue
			}
		}
		l.mu.Lock()
		l.expired = true
		l.State = types.HttpNfcLeaseStateError
		l.Error = &types.LocalizedMethodFault{
			Fault:            &types.Timedout{},
			LocalizedMessage: "Operation timed out.",
		}
		l.mu.Unlock()
		l.end()
		return
	}
}

// end stops serving the lease and removes its files (once).
func (l *ExportLease) end() {
	exportLeases.Delete(l.Self.Value)
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.ended:
	default:
		close(l.ended)
		_ = os.RemoveAll(l.dir)
	}
}

func (l *ExportLease) timedOut() soap.HasFault {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.expired {
		return nil
	}
	return &methods.HttpNfcLeaseProgressBody{Fault_: Fault("the lease timed out", &types.Timedout{})}
}

// HttpNfcLeaseProgress keeps the lease alive.
func (l *ExportLease) HttpNfcLeaseProgress(ctx *Context, req *types.HttpNfcLeaseProgress) soap.HasFault {
	if fault := l.timedOut(); fault != nil {
		return fault
	}
	l.mu.Lock()
	l.last = time.Now()
	l.TransferProgress = req.Percent
	l.mu.Unlock()
	return &methods.HttpNfcLeaseProgressBody{Res: new(types.HttpNfcLeaseProgressResponse)}
}

// HttpNfcLeaseComplete ends the lease.
func (l *ExportLease) HttpNfcLeaseComplete(ctx *Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	if fault := l.timedOut(); fault != nil {
		return &methods.HttpNfcLeaseCompleteBody{Fault_: fault.Fault()}
	}
	l.mu.Lock()
	l.State = types.HttpNfcLeaseStateDone
	l.mu.Unlock()
	l.end()
	ctx.Session.Remove(req.This)
	return &methods.HttpNfcLeaseCompleteBody{Res: new(types.HttpNfcLeaseCompleteResponse)}
}

// HttpNfcLeaseAbort ends the lease.
func (l *ExportLease) HttpNfcLeaseAbort(ctx *Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	l.mu.Lock()
	if !l.expired {
		l.State = types.HttpNfcLeaseStateError
	}
	l.mu.Unlock()
	l.end()
	ctx.Session.Remove(req.This)
	return &methods.HttpNfcLeaseAbortBody{Res: new(types.HttpNfcLeaseAbortResponse)}
}

// NfcExports returns next with the GETs of export leases served here.
func NfcExports(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, nfcPrefix) {
			next.ServeHTTP(w, r)
			return
		}
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, nfcPrefix), "/")
		if len(parts) != 2 {
			next.ServeHTTP(w, r)
			return
		}
		found, ok := exportLeases.Load(parts[0])
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		found.(*ExportLease).serve(w, parts[1])
	})
}

func (l *ExportLease) serve(w http.ResponseWriter, name string) {
	file, ok := l.files[name]
	if !ok {
		http.NotFound(w, nil)
		return
	}
	f, err := os.Open(file)
	if err != nil {
		http.NotFound(w, nil)
		return
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(info.Size()))
	w.WriteHeader(http.StatusOK)
	buf := make([]byte, 256*1024)
	for {
		select {
		case <-l.ended:
			panic(http.ErrAbortHandler) // cut off, as a lease that ended cuts its transfers
		default:
		}
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			panic(http.ErrAbortHandler)
		}
	}
}
