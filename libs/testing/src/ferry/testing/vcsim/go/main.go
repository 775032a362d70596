// Command vcsim serves govmomi's vSphere API simulator for Ferry's tests.
//
// Debian packages govmomi's simulator library but not its vcsim command, so the
// tests build this launcher from the packaged sources (GOPATH mode, no network).
// It serves the stock VPX model (one datacenter, a cluster of three hosts, one
// standalone host, one local datastore, two VMs per resource pool) over TLS with
// the simulator's built-in localhost certificate, on the address given.
//
// The credentials come from VCSIM_USERNAME / VCSIM_PASSWORD so that they never
// appear in a process listing. Once serving, one JSON line goes to stdout (the
// SDK URL, the certificate's SHA-1 thumbprint and a PEM file of it); the process
// then runs until SIGTERM or SIGINT and removes the datastore folders it made.
package main

import (
	"crypto/sha1"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
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

func main() {
	listen := flag.String("l", "127.0.0.1:0", "address to listen on")
	flag.Parse()

	user, pass := os.Getenv("VCSIM_USERNAME"), os.Getenv("VCSIM_PASSWORD")
	if user == "" || pass == "" {
		log.Fatal("VCSIM_USERNAME and VCSIM_PASSWORD must be set")
	}

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(user, pass)}
	model.Service.TLS = new(tls.Config)
	server := model.Service.NewServer()
	defer server.Close()

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
