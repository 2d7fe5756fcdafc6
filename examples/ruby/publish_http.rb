# Publish one notification through the admin API, POST /v1/publish (net/http).
# Env: HERMES_ADMIN_URL (http://127.0.0.1:8081, the internal listener), HERMES_ADMIN_KEY
# (required), ROOM_ID (room-1). Prints the message it published.
require "json"
require "net/http"
require "securerandom"

admin_url = ENV.fetch("HERMES_ADMIN_URL", "http://127.0.0.1:8081")
message = {
  user_id: "backend",
  room_id: ENV.fetch("ROOM_ID", "room-1"),
  data: { type: "order.shipped", order_id: 42, via: "ruby/http" },
  id: SecureRandom.uuid,
  published_at: (Time.now.to_f * 1000).to_i,
}

uri = URI("#{admin_url}/v1/publish")
response = Net::HTTP.post(uri, message.to_json,
                          "Authorization" => "Bearer #{ENV.fetch('HERMES_ADMIN_KEY')}",
                          "Content-Type" => "application/json")
# 202 {"id","delivered","gone","gateways"}; 400 names the bad field; 502 when a gateway failed.
raise "POST /v1/publish: #{response.code} #{response.body}" unless response.code == "202"
puts message.to_json
