// Command tlsecho measures a TLS round trip over loopback, inside one process: a client
// writes a message and reads it back from an echo server (Go's crypto/tls at both ends). The
// benchmark runs it untraced and traced by mqtrace, whose probes on (*Conn).Write and
// (*Conn).Read fire four times per round trip, and compares.
//
//	tlsecho [--count N] [--size BYTES]
//
// stdout: one JSON object, {"round_trips": N, "size": BYTES, "ns_per_round_trip": T}.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"io"
	"log"
	"math/big"
	"os"
	"time"
)

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	template := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tlsecho"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func main() {
	count := flag.Int("count", 20000, "round trips to time")
	size := flag.Int("size", 64, "bytes per message")
	flag.Parse()

	listener, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{selfSigned()}})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		conn, err := listener.Accept()
		if err != nil {
			log.Fatal(err)
		}
		buf := make([]byte, 64*1024)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if _, err := conn.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	conn, err := tls.Dial("tcp", listener.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		log.Fatal(err)
	}
	message := bytes.Repeat([]byte("x"), *size)
	reply := make([]byte, *size)
	roundTrip := func() {
		if _, err := conn.Write(message); err != nil {
			log.Fatal(err)
		}
		if _, err := io.ReadFull(conn, reply); err != nil {
			log.Fatal(err)
		}
	}
	for i := 0; i < 100; i++ {
		roundTrip() // the handshake and warm-up, untimed
	}
	start := time.Now()
	for i := 0; i < *count; i++ {
		roundTrip()
	}
	elapsed := time.Since(start)
	conn.Close()
	json.NewEncoder(os.Stdout).Encode(map[string]int64{
		"round_trips":       int64(*count),
		"size":              int64(*size),
		"ns_per_round_trip": elapsed.Nanoseconds() / int64(*count),
	})
}
