// Publish one notification through the admin API, POST /v1/publish (net/http).
// Env: HERMES_ADMIN_URL (http://127.0.0.1:8081, the internal listener), HERMES_ADMIN_KEY
// (required), ROOM_ID (room-1). Prints the message it published.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	adminURL := os.Getenv("HERMES_ADMIN_URL")
	if adminURL == "" {
		adminURL = "http://127.0.0.1:8081"
	}
	room := os.Getenv("ROOM_ID")
	if room == "" {
		room = "room-1"
	}
	body, err := json.Marshal(map[string]any{
		"user_id":      "backend",
		"room_id":      room,
		"data":         map[string]any{"type": "order.shipped", "order_id": 42, "via": "go/http"},
		"id":           rand.Text(),
		"published_at": time.Now().UnixMilli(),
	})
	if err != nil {
		log.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, adminURL+"/v1/publish", bytes.NewReader(body))
	if err != nil {
		log.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+os.Getenv("HERMES_ADMIN_KEY"))
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		log.Fatalf("POST /v1/publish: %v", err)
	}
	defer resp.Body.Close()
	// 202 {"id","delivered","gone","gateways"}; 400 names the bad field; 502 when a gateway failed.
	if resp.StatusCode != http.StatusAccepted {
		answer, _ := io.ReadAll(resp.Body)
		log.Fatalf("POST /v1/publish: %s %s", resp.Status, answer)
	}
	fmt.Println(string(body))
}
