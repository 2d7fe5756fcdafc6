# Publish one notification to Hermes through Amazon SQS. Debian ships the AWS SDK for Ruby
# only as version 1 (ruby-aws-sdk 1.67, `require "aws-sdk"`, AWS::SQS); version 3's
# aws-sdk-sqs gem is not packaged. With the gem from rubygems.org the call is
# Aws::SQS::Client.new.send_message(queue_url:, message_body:) (docs/publishing.md).
# Env: HERMES_SQS_QUEUE_URL (required), AWS_REGION, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_SQS (a local server), ROOM_ID (room-1).
# Prints the message it published.
require "aws-sdk"
require "json"
require "securerandom"
require "uri"

message = {
  user_id: "backend",
  room_id: ENV.fetch("ROOM_ID", "room-1"),
  data: { type: "order.shipped", order_id: 42, via: "ruby/sqs" },
  id: SecureRandom.uuid,
  published_at: (Time.now.to_f * 1000).to_i,
}

options = { region: ENV.fetch("AWS_REGION", "us-east-1") } # credentials: the AWS_* variables
if (endpoint = ENV["AWS_ENDPOINT_URL_SQS"]) # version 1 predates AWS_ENDPOINT_URL_SQS
  uri = URI(endpoint)
  options.merge!(sqs_endpoint: uri.host, sqs_port: uri.port, use_ssl: uri.scheme == "https")
end
AWS::SQS::Client.new(options).send_message(
  queue_url: ENV.fetch("HERMES_SQS_QUEUE_URL"),
  message_body: message.to_json,
)
puts message.to_json
