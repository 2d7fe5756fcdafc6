// echo is a test program for the local node.
//
//	echo            serve: GET / answers "echo <pod name> <remote address>",
//	                /healthz answers "ok"; listens on $ECHO_LISTEN (default :8080)
//	echo get URL    GET URL and print the body (exit 1 on an error or a non-2xx);
//	                TLS is not verified (it only checks reachability)
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "get" {
		get(os.Args[2])
		return
	}
	addr := os.Getenv("ECHO_LISTEN")
	if addr == "" {
		addr = ":8080"
	}
	host, _ := os.Hostname()
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "echo %s %s\n", host, r.RemoteAddr)
	})
	log.Printf("echo %s listening on %s", host, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}

func get(url string) {
	c := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s", body)
	if resp.StatusCode/100 != 2 {
		fmt.Fprintf(os.Stderr, "%s: %s\n", url, resp.Status)
		os.Exit(1)
	}
}
