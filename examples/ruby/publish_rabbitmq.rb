# Publish one notification to Hermes through RabbitMQ (Bunny: Debian's ruby-bunny).
# Env: HERMES_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f), HERMES_AMQP_QUEUE
# (hermes-messageQueue), ROOM_ID (room-1). Prints the message it published.
require "bunny"
require "json"
require "securerandom"

url = ENV.fetch("HERMES_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
queue = ENV.fetch("HERMES_AMQP_QUEUE", "hermes-messageQueue")

message = {
  user_id: "backend", # the sender, shown to browsers
  room_id: ENV.fetch("ROOM_ID", "room-1"),
  data: { type: "order.shipped", order_id: 42, via: "ruby/rabbitmq" },
  id: SecureRandom.uuid, # dedup id: a redelivery is pushed once
  published_at: (Time.now.to_f * 1000).to_i, # milliseconds since the epoch
}

connection = Bunny.new(url, logger: Logger.new(nil))
connection.start
channel = connection.create_channel
channel.queue(queue, durable: true) # as the consumer declares it
channel.confirm_select # the broker confirms each publish
channel.default_exchange.publish(
  message.to_json,
  routing_key: queue,
  persistent: true, # delivery mode 2: survives a broker restart
  content_type: "application/json",
  message_id: message[:id],
)
raise "the broker did not confirm the message" unless channel.wait_for_confirms
connection.close
puts message.to_json
