# One recipe per workflow. `make help` lists them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/hermes/target

.PHONY: help run test fmt lint unit e2e sdk examples client browser build release services chart manifests dry-run
help: ## List the recipes
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
run: ## Run Hermes standalone (demo page on http://127.0.0.1:8080/)
	cargo run --release -p hermes-gateway -- standalone
test: ## Run every test (installs Chromium and the node packages if missing)
	./scripts/test.sh
fmt: ## Format the code
	cargo fmt --all
lint: ## clippy with warnings as errors
	cargo clippy --workspace --all-targets -- -D warnings
unit: ## Rust tests that need no services (unit tests, the gateway binary's integration tests)
	cargo test --workspace --exclude hermes-e2e
e2e: ## The end-to-end tests on the real services and kube-apiserver (starts them first)
	scripts/services/up.sh && scripts/kube/control-plane.sh start && \
	. $${HERMES_CACHE:-$$HOME/.cache/hermes}/services.env && eval "$$(scripts/kube/control-plane.sh env)" && \
	HERMES_TEST_KUBECONFIG="$$KUBECONFIG" cargo test -p hermes-e2e
sdk: build ## The AWS SDKs (boto3, JavaScript) against a real gateway, SigV4 @connections
	HERMES_GATEWAY_BIN=$(CARGO_TARGET_DIR)/debug/hermes-gateway tests/sdk/run.sh
examples: build ## The producer and token examples (Python, Node, Go, Ruby, curl) against a real gateway and consumers
	HERMES_GATEWAY_BIN=$(CARGO_TARGET_DIR)/debug/hermes-gateway HERMES_CONSUMER_BIN=$(CARGO_TARGET_DIR)/debug/hermes-consumer examples/run.sh
client: ## The browser client package's own tests (clients/js: node --test, npm pack, tsc)
	clients/js/run.sh
browser: build ## Browser tests only
	HERMES_GATEWAY_BIN=$(CARGO_TARGET_DIR)/debug/hermes-gateway tests/browser/run.sh
build: ## Debug build of every binary
	cargo build --workspace
release: ## Release build of every binary
	cargo build --workspace --release
services: ## Start Cassandra, RabbitMQ and the SQS server for the tests
	scripts/services/up.sh
chart: ## helm lint + helm template for every ci/*-values.yaml
	scripts/kube/helm.sh lint
manifests: ## Re-render k8s/hermes.yaml from the chart
	scripts/kube/render-manifests.sh
dry-run: ## Server-side dry run of every rendered manifest on the local kube-apiserver
	scripts/kube/dry-run.sh
