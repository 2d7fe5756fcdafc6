// Publish one notification to Hermes through Amazon SQS (aws-sdk-go-v2).
// Env: HERMES_SQS_QUEUE_URL (required), the standard AWS_* variables (AWS_REGION,
// credentials, AWS_ENDPOINT_URL_SQS for a local server), ROOM_ID (room-1).
// Prints the message it published.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
)

func main() {
	room := os.Getenv("ROOM_ID")
	if room == "" {
		room = "room-1"
	}
	body, err := json.Marshal(map[string]any{
		"user_id":      "backend",
		"room_id":      room,
		"data":         map[string]any{"type": "order.shipped", "order_id": 42, "via": "go/sqs"},
		"id":           rand.Text(),
		"published_at": time.Now().UnixMilli(),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx) // AWS_REGION, credentials, AWS_ENDPOINT_URL_SQS
	if err != nil {
		log.Fatalf("AWS configuration: %v", err)
	}
	_, err = sqs.NewFromConfig(cfg).SendMessage(ctx, &sqs.SendMessageInput{
		QueueUrl:    aws.String(os.Getenv("HERMES_SQS_QUEUE_URL")),
		MessageBody: aws.String(string(body)),
	})
	if err != nil {
		log.Fatalf("SendMessage: %v", err)
	}
	fmt.Println(string(body))
}
