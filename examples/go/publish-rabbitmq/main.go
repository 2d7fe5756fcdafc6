// Publish one notification to Hermes through RabbitMQ (amqp091-go).
// Env: HERMES_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f), HERMES_AMQP_QUEUE
// (hermes-messageQueue), ROOM_ID (room-1). Prints the message it published.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	url := env("HERMES_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
	queue := env("HERMES_AMQP_QUEUE", "hermes-messageQueue")
	message := map[string]any{
		"user_id":      "backend", // the sender, shown to browsers
		"room_id":      env("ROOM_ID", "room-1"),
		"data":         map[string]any{"type": "order.shipped", "order_id": 42, "via": "go/rabbitmq"},
		"id":           rand.Text(),            // dedup id: a redelivery is pushed once
		"published_at": time.Now().UnixMilli(), // milliseconds since the epoch
	}
	body, err := json.Marshal(message)
	if err != nil {
		log.Fatal(err)
	}

	conn, err := amqp.Dial(url)
	if err != nil {
		log.Fatalf("connect: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatalf("channel: %v", err)
	}
	// As the consumer declares it: durable, no arguments.
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		log.Fatalf("declare: %v", err)
	}
	if err := ch.Confirm(false); err != nil { // the broker confirms each publish
		log.Fatalf("confirm mode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	confirmation, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent, // survives a broker restart
		ContentType:  "application/json",
		MessageId:    message["id"].(string),
		Body:         body,
	})
	if err != nil {
		log.Fatalf("publish: %v", err)
	}
	if acked, err := confirmation.WaitContext(ctx); err != nil || !acked {
		log.Fatalf("the broker did not confirm the message (%v)", err)
	}
	fmt.Println(string(body))
}
