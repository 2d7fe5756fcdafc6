// Connect tokens for Hermes (golang-jwt), in the three ways docs/tokens.md describes.
//
//	mint-token issue|seed|off
//
//   - issue: ask Hermes (POST /v1/tokens): it stores bcrypt(token) for the user and room and
//     returns the signed JWT. Env HERMES_ADMIN_URL, HERMES_ADMIN_KEY.
//   - seed: sign here, as the original application does: token = hex(sha256(user_id +
//     passcode + room_id)), HS512 over {user_id, room_id, token, exp}; its bcrypt hash is
//     registered by POST /v1/tokens (same HERMES_TOKEN_PASSCODE) or import-tokens.
//     Env HERMES_JWT_SECRET, HERMES_TOKEN_PASSCODE.
//   - off: for gateways with HERMES_TOKEN_CHECK=off: HS512 over {user_id, room_id, exp}.
//     Env HERMES_JWT_SECRET.
//
// USER_ID (user-1), ROOM_ID (room-1), TOKEN_TTL_SECONDS (3600). Prints
// {"token": <JWT>, "mints": N}: the token is asked for twice, and minted once.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

var ttl = func() int64 {
	n, err := strconv.ParseInt(env("TOKEN_TTL_SECONDS", "3600"), 10, 64)
	if err != nil {
		log.Fatalf("TOKEN_TTL_SECONDS: %v", err)
	}
	return n
}()

type minted struct {
	Token string `json:"token"`
	Exp   int64  `json:"expires_at"`
}

func issue(userID, roomID string) (minted, error) {
	body, _ := json.Marshal(map[string]any{"user_id": userID, "room_id": roomID, "ttl_seconds": ttl})
	req, err := http.NewRequest(http.MethodPost, env("HERMES_ADMIN_URL", "http://127.0.0.1:8081")+"/v1/tokens", bytes.NewReader(body))
	if err != nil {
		return minted{}, err
	}
	req.Header.Set("Authorization", "Bearer "+os.Getenv("HERMES_ADMIN_KEY"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return minted{}, err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return minted{}, fmt.Errorf("POST /v1/tokens: %s %s", resp.Status, answer)
	}
	var m minted
	return m, json.Unmarshal(answer, &m)
}

func sign(claims jwt.MapClaims) (minted, error) {
	exp := time.Now().Unix() + ttl
	claims["exp"] = exp
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS512, claims).SignedString([]byte(os.Getenv("HERMES_JWT_SECRET")))
	return minted{token, exp}, err
}

func seed(userID, roomID string) (minted, error) {
	sum := sha256.Sum256([]byte(userID + os.Getenv("HERMES_TOKEN_PASSCODE") + roomID))
	return sign(jwt.MapClaims{"user_id": userID, "room_id": roomID, "token": hex.EncodeToString(sum[:])})
}

func off(userID, roomID string) (minted, error) {
	return sign(jwt.MapClaims{"user_id": userID, "room_id": roomID})
}

// TokenCache keeps one token per (user, room) and mints again only when it is about to expire.
type TokenCache struct {
	Mint   func(userID, roomID string) (minted, error)
	Margin time.Duration
	mu     sync.Mutex
	tokens map[[2]string]minted
	Mints  int
}

func (c *TokenCache) Get(userID, roomID string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := [2]string{userID, roomID}
	cached, ok := c.tokens[key]
	if !ok || time.Unix(cached.Exp, 0).Add(-c.Margin).Before(time.Now()) {
		m, err := c.Mint(userID, roomID)
		if err != nil {
			return "", err
		}
		if c.tokens == nil {
			c.tokens = map[[2]string]minted{}
		}
		c.tokens[key], cached = m, m
		c.Mints++
	}
	return cached.Token, nil
}

func main() {
	mints := map[string]func(string, string) (minted, error){"issue": issue, "seed": seed, "off": off}
	if len(os.Args) != 2 || mints[os.Args[1]] == nil {
		log.Fatal("usage: mint-token issue|seed|off")
	}
	cache := &TokenCache{Mint: mints[os.Args[1]], Margin: time.Minute}
	userID, roomID := env("USER_ID", "user-1"), env("ROOM_ID", "room-1")
	first, err := cache.Get(userID, roomID)
	if err != nil {
		log.Fatal(err)
	}
	again, err := cache.Get(userID, roomID) // a reconnect: the same token
	if err != nil {
		log.Fatal(err)
	}
	if first != again && ttl > 60 {
		log.Fatal("the cache minted twice")
	}
	out, _ := json.Marshal(map[string]any{"token": first, "mints": cache.Mints})
	fmt.Println(string(out))
}
