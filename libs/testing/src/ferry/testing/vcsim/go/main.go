// Command vcsim serves govmomi's vSphere API simulator for Ferry's tests.
//
// Debian packages govmomi's simulator library but not its vcsim command, so the
// tests build this launcher from the packaged sources (GOPATH mode, no network).
// It serves the stock VPX model (one datacenter, a cluster of three hosts, one
// standalone host, one local datastore, two VMs per resource pool) over TLS with
// a fresh self-signed P-256 certificate for 127.0.0.1 (the built-in one is RSA
// 1024, which OpenSSL refuses), so each run shows a new thumbprint.
//
// The credentials come from VCSIM_USERNAME / VCSIM_PASSWORD so that they never
// appear in a process listing. Once serving, one JSON line goes to stdout (the
// SDK URL, the certificate's SHA-1 thumbprint and a PEM file of it); the process
// then runs until SIGTERM or SIGINT and removes the datastore folders it made.
//
// -no-flat-reads answers 404 for /folder reads of -flat.vmdk files, as a vSAN or
// vVols datastore does (disks are objects there, not files).
//
// -nfc-lease-timeout is how long an ExportVm lease lives without a progress call
// (300 s, vSphere's default).
//
// -idle-timeout ends a session that made no API call for that long, as vCenter's
// idle timeout does (30 min by default there); 0, the default, keeps sessions until
// logout. govmomi checks every timeout's length, so an idle session ends between one
// and two timeouts after its last call.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"crypto/x509"
	"crypto/x509/pkix"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type ready struct {
	URL        string `json:"url"`
	Thumbprint string `json:"thumbprint"`
	CertFile   string `json:"cert_file"`
}

func thumbprint(raw []byte) string {
	sum := sha1.Sum(raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	template := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func main() {
	listen := flag.String("l", "127.0.0.1:0", "address to listen on")
	idle := flag.Duration("idle-timeout", 0, "end a session idle this long (0: never)")
	leaseTimeout := flag.Duration("nfc-lease-timeout", simulator.NfcLeaseTimeout,
		"expire an export lease after this long without a progress call")
	noFlat := flag.Bool("no-flat-reads", false,
		"answer 404 for /folder reads of -flat.vmdk files, as vSAN and vVols do")
	flag.Parse()
	simulator.NoFlatReads = *noFlat
	if *leaseTimeout < time.Second {
		log.Fatal("-nfc-lease-timeout must be at least 1s")
	}
	simulator.NfcLeaseTimeout = *leaseTimeout
	if *idle < 0 {
		log.Fatal("-idle-timeout must not be negative")
	}
	simulator.SessionIdleTimeout = *idle

	user, pass := os.Getenv("VCSIM_USERNAME"), os.Getenv("VCSIM_PASSWORD")
	if user == "" || pass == "" {
		log.Fatal("VCSIM_USERNAME and VCSIM_PASSWORD must be set")
	}

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	// Change ids for snapshots of VMs with CBT on (simulator/change_tracker.go).
	simulator.Map.AddHandler(simulator.ChangeTracker())

	// The model's VMs stand for guests with VMware Tools running, so a guest
	// shutdown can be asked of them; VMs created later through the API have none.
	for _, obj := range simulator.Map.All("VirtualMachine") {
		vm := obj.(*simulator.VirtualMachine)
		vm.Guest.ToolsRunningStatus = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
		vm.Guest.ToolsStatus = types.VirtualMachineToolsStatusToolsOk
	}

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(user, pass)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned()}}
	server := model.Service.NewServer()
	defer server.Close()
	// /folder only with a live session's cookie (simulator/folder_sessions.go); set
	// before the ready line, so before any client can send a request.
	server.Config.Handler = simulator.FolderSessions(server.Config.Handler)
	// GETs of ExportVm's NFC leases (simulator/export_vm.go).
	server.Config.Handler = simulator.NfcExports(server.Config.Handler)

	certFile, err := server.CertificateFile()
	if err != nil {
		log.Fatal(err)
	}
	sdk := *server.URL
	sdk.User = nil
	line, _ := json.Marshal(ready{
		URL:        sdk.String(),
		Thumbprint: thumbprint(server.Certificate().Raw),
		CertFile:   certFile,
	})
	fmt.Println(string(line))

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
}
