# Connect tokens for Hermes (ruby-jwt: Debian's ruby-jwt), in the three ways
# docs/tokens.md describes.
#
#   ruby mint_token.rb issue|seed|off
#
# - issue: ask Hermes (POST /v1/tokens, net/http): it stores bcrypt(token) for the user and
#   room and returns the signed JWT. Env HERMES_ADMIN_URL, HERMES_ADMIN_KEY.
# - seed: sign here, exactly as the original application does: token =
#   hex(sha256(user_id + passcode + room_id)), HS512 over {user_id, room_id, token, exp};
#   its bcrypt hash is registered by POST /v1/tokens (same HERMES_TOKEN_PASSCODE) or
#   import-tokens. Env HERMES_JWT_SECRET, HERMES_TOKEN_PASSCODE.
# - off: for gateways with HERMES_TOKEN_CHECK=off: HS512 over {user_id, room_id, exp}.
#   Env HERMES_JWT_SECRET.
# USER_ID (user-1), ROOM_ID (room-1), TOKEN_TTL_SECONDS (3600). Prints
# {"token": <JWT>, "mints": N}: the token is asked for twice, and minted once.
require "digest"
require "json"
require "jwt"
require "net/http"

TTL = Integer(ENV.fetch("TOKEN_TTL_SECONDS", "3600"))

def issue(user_id, room_id)
  uri = URI("#{ENV.fetch('HERMES_ADMIN_URL', 'http://127.0.0.1:8081')}/v1/tokens")
  response = Net::HTTP.post(uri, { user_id: user_id, room_id: room_id, ttl_seconds: TTL }.to_json,
                            "Authorization" => "Bearer #{ENV.fetch('HERMES_ADMIN_KEY')}",
                            "Content-Type" => "application/json")
  raise "POST /v1/tokens: #{response.code} #{response.body}" unless response.code == "201"
  body = JSON.parse(response.body)
  [body["token"], body["expires_at"]]
end

def seed(user_id, room_id)
  token = Digest::SHA256.hexdigest("#{user_id}#{ENV.fetch('HERMES_TOKEN_PASSCODE')}#{room_id}")
  exp = Time.now.to_i + TTL
  claims = { user_id: user_id, room_id: room_id, token: token, exp: exp }
  [JWT.encode(claims, ENV.fetch("HERMES_JWT_SECRET"), "HS512"), exp]
end

def off(user_id, room_id)
  exp = Time.now.to_i + TTL
  [JWT.encode({ user_id: user_id, room_id: room_id, exp: exp }, ENV.fetch("HERMES_JWT_SECRET"), "HS512"), exp]
end

# One token per (user, room), minted again only when it is about to expire.
class TokenCache
  attr_reader :mints

  def initialize(mint, margin_seconds: 60)
    @mint, @margin, @tokens, @mints, @lock = mint, margin_seconds, {}, 0, Mutex.new
  end

  def get(user_id, room_id)
    @lock.synchronize do
      token, exp = @tokens[[user_id, room_id]]
      if token.nil? || exp - @margin <= Time.now.to_i
        token, exp = @mint.call(user_id, room_id)
        @mints += 1
        @tokens[[user_id, room_id]] = [token, exp]
      end
      token
    end
  end
end

mode = ARGV.fetch(0)
abort "usage: mint_token.rb issue|seed|off" unless %w[issue seed off].include?(mode)
cache = TokenCache.new(method(mode))
user_id, room_id = ENV.fetch("USER_ID", "user-1"), ENV.fetch("ROOM_ID", "room-1")
first = cache.get(user_id, room_id)
again = cache.get(user_id, room_id) # a reconnect: the same token
raise "the cache minted twice" if first != again && TTL > 60
puts({ token: first, mints: cache.mints }.to_json)
